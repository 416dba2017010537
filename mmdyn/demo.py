"""`make demo`: a LAS-ResNet detector against its static twin, offline, on a CPU.

Builds the COCO-format fixture (real VOC photo with its instance masks + skimage
backgrounds with drawn objects), trains Faster R-CNN with the plain ResNet-18 from
random init (no pretrained weights exist offline), then fine-tunes the same detector
with LAS-ResNet-18 from those weights, as LAS fine-tunes a trained network (the dense
checkpoint loads into the LAS backbone; only the maskers start fresh). Evaluates both
with COCO mAP, measures backbone latency (sparse path with the learned masks vs the
static backbone, BatchNorm folded, one process), writes per-block mask overlays and
prints one table. Numbers are from a tiny synthetic dataset: they show that the
pipeline works end to end, not what the method achieves on COCO.

    python -m mmdyn.demo [--iters N] [--work-dir DIR]

``--iters`` (default 160) sets the static training; the LAS fine-tune takes half as
many. About 2.5 minutes on 2 quiet cores at the default; when the masks have had too
few steps to sparsify (more than 90 % of the patches computed), the table says so.
"""
import argparse
import json
import os
import time
from pathlib import Path

import cv2
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmdyn  # noqa: F401  (registers mmdyn modules)
from mmdyn.analysis import keep_freed_memory, prepare_dense_for_timing, time_models
from mmdyn.datasets import build_coco_fixture
from mmdyn.visualization import save_block_overlays

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'demo'
STATIC_CONFIG = CONFIG_DIR / 'faster-rcnn_r18_fpn_demo-fixture.py'
LAS_CONFIG = CONFIG_DIR / 'faster-rcnn_las-r18-s4421-t07_fpn_demo-fixture.py'


COLUMNS = """columns:
  mAP, mAP50     COCO box mAP (IoU 0.50:0.95, and 0.50) on the fixture's validation images
  act. rate      mean fraction of the LAS blocks' patches computed (1: every patch, dense)
  bb GFLOPs      backbone multiply-adds per image, counted from the masks actually used
  bb latency ms  one backbone forward on the first validation image, BatchNorm folded,
                 channels-last, median of 15 after 3 warm-up, the two models alternating"""


class ProgressHook(Hook):
    """One short line every ``interval`` iterations (the runner's own log is muted)."""
    priority = 'LOWEST'

    def __init__(self, label: str, interval: int = 20):
        self.label, self.interval, self.start = label, interval, None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.start = self.start or time.time()
        step = runner.iter + 1
        if step % self.interval == 0 or step == runner.max_iters:
            loss = outputs['loss'].item() if outputs and 'loss' in outputs else float('nan')
            print(f'  [{self.label}] iter {step}/{runner.max_iters}  loss {loss:.3f}  '
                  f'{time.time() - self.start:.0f}s', flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=160,
                        help='iterations of the static training (the LAS fine-tune from '
                             'its weights takes half as many); default 160, about 2.5 '
                             'min on 2 quiet cores')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    return parser.parse_args()


def train_and_evaluate(config, label, work_dir, data_root, classes, iters, load_from=None):
    """Train ``config`` for ``iters`` iterations (from ``load_from`` when given), then
    evaluate it once on the fixture's validation split."""
    cfg = Config.fromfile(str(config))
    cfg.work_dir = os.path.join(work_dir, label)
    cfg.log_level = 'WARNING'
    cfg.load_from = load_from
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters + 1  # evaluate once, after training
    cfg.default_hooks.checkpoint.interval = iters
    cfg.param_scheduler[0].end = min(cfg.param_scheduler[0].end, max(iters // 4, 1))
    cfg.param_scheduler[1].end = iters
    cfg.param_scheduler[1].milestones = [int(iters * 0.8)]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].dataset.metainfo = dict(classes=classes)
    cfg.val_evaluator = cfg.val_evaluator if isinstance(cfg.val_evaluator, list) \
        else [cfg.val_evaluator]
    cfg.val_evaluator[0].ann_file = os.path.join(data_root, 'annotations/instances_val2017.json')
    cfg.test_evaluator = cfg.val_evaluator
    runner = Runner.from_cfg(cfg)
    runner.register_hook(ProgressHook(label))
    print(f'training {label} ({iters} iterations)...', flush=True)
    runner.train()
    metrics = runner.val()
    return runner, metrics


def first_val_batch(runner):
    batch = next(iter(runner.val_dataloader))
    return runner.model.data_preprocessor(batch, False)


def main():
    args = parse_args()
    start = time.time()
    torch.set_flush_denormal(True)
    data_root = os.path.join(args.work_dir, 'coco_fixture')
    fixture = build_coco_fixture(data_root, num_shape_images=24, image_size=320, seed=0)
    classes = fixture['classes']
    print(f'fixture: {fixture["num_images"]} images, classes {classes} -> {data_root}')
    static, static_metrics = train_and_evaluate(STATIC_CONFIG, 'static', args.work_dir,
                                                data_root, classes, args.iters)
    las, las_metrics = train_and_evaluate(
        LAS_CONFIG, 'las', args.work_dir, data_root, classes, max(args.iters // 2, 1),
        load_from=os.path.join(args.work_dir, 'static', f'iter_{args.iters}.pth'))

    print('measuring backbone latency (median of 15, both BatchNorm-folded)...', flush=True)
    keep_freed_memory()
    batch = first_val_batch(las)
    x = batch['inputs'].contiguous(memory_format=torch.channels_last)
    static_backbone = prepare_dense_for_timing(static.model.backbone)
    las_backbone = las.model.backbone.prepare_for_timing()
    timed = time_models(dict(dense=static_backbone, sparse=las_backbone), x, warmup=3,
                        repeats=15)

    masks_dir = os.path.join(args.work_dir, 'masks')
    las.model.eval()
    with torch.no_grad():
        las.model.predict(batch['inputs'], batch['data_samples'])
    sample = batch['data_samples'][0]
    rgb = cv2.imread(sample.img_path)[..., ::-1]
    height, width = sample.img_shape
    rgb = cv2.resize(rgb, (width, height))
    overlays = save_block_overlays(rgb, las_backbone.records, 0, sample.batch_input_shape,
                                   os.path.join(masks_dir, Path(sample.img_path).stem),
                                   terms=las_backbone.mask_terms)

    rows = [
        dict(model='Faster R-CNN + ResNet-18 (static)',
             mAP=static_metrics['coco/bbox_mAP'], mAP50=static_metrics['coco/bbox_mAP_50'],
             activation=1.0, gflops=las_metrics['sparsity/backbone_gflops_dense'],
             latency_ms=timed['dense'][1] * 1e3),
        dict(model='Faster R-CNN + LAS-ResNet-18 (sparse)',
             mAP=las_metrics['coco/bbox_mAP'], mAP50=las_metrics['coco/bbox_mAP_50'],
             activation=las_metrics['sparsity/activation_rate'],
             gflops=las_metrics['sparsity/backbone_gflops_executed'],
             latency_ms=timed['sparse'][1] * 1e3),
    ]
    ratio = rows[1]['latency_ms'] / rows[0]['latency_ms']
    print(f'\nOffline fixture; static: {args.iters} iterations from random init; LAS: '
          f'{max(args.iters // 2, 1)} iterations from the static weights; CPU '
          f'{torch.get_num_threads()} threads; backbone input {tuple(x.shape[2:])}')
    print(f'{"model":<40}{"mAP":>7}{"mAP50":>7}{"act. rate":>10}{"bb GFLOPs":>10}'
          f'{"bb latency ms":>15}')
    for row in rows:
        print(f'{row["model"]:<40}{row["mAP"]:>7.3f}{row["mAP50"]:>7.3f}'
              f'{row["activation"]:>10.3f}{row["gflops"]:>10.3f}{row["latency_ms"]:>15.1f}')
    print(f'latency ratio LAS/static {ratio:.3f}, FLOPs ratio '
          f'{rows[1]["gflops"] / rows[0]["gflops"]:.3f}')
    print(COLUMNS)
    if rows[1]['activation'] > 0.9:
        print(f'note: the masks still compute {rows[1]["activation"]:.0%} of the patches; '
              f'{args.iters} iterations are too few for them to sparsify (default 160)')
    print(f'mask overlays: {os.path.dirname(overlays[-1])}; demo took '
          f'{(time.time() - start) / 60:.1f} min')
    with open(os.path.join(args.work_dir, 'demo_results.json'), 'w') as f:
        json.dump(dict(rows=rows, iters=args.iters, latency_ratio=ratio, overlays=overlays),
                  f, indent=2)


if __name__ == '__main__':
    main()
