"""PNG overlays of the patches every dynamic block selected, for images of your choice.

    python tools/analysis/visualize_masks.py CONFIG CHECKPOINT IMG [IMG ...] --out-dir DIR

Works for mmdet and mmseg configs with a dynamic backbone; writes
``DIR/<image stem>/<block>.png`` (``<block>.g<k>.png`` per channel group for SAR-ResNet)
and ``DIR/<image stem>/all_blocks.png`` (``all_blocks_<page>.png`` for deep networks),
each with a legend in the method's words (LAS: computed / skipped patch; SAR: refined /
base branch only; SFSI: sampled / interpolated; CAD: kept / downsampled).
"""
import argparse
import os
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import mmdyn  # noqa: E402,F401
from mmdyn.models.backbones import DynamicBackboneMixin  # noqa: E402
from mmdyn.utils import resolve_checkpoint  # noqa: E402
from mmdyn.visualization import save_block_overlays  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='a local checkpoint, or "none" for random init')
    parser.add_argument('images', nargs='+')
    parser.add_argument('--out-dir', default='work_dirs/mask_overlays')
    return parser.parse_args()


def load(config, checkpoint):
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    checkpoint = resolve_checkpoint(checkpoint, allow_none=True)
    if cfg.get('default_scope') == 'mmseg':
        from mmseg.apis import inference_model, init_model
        return init_model(cfg, checkpoint, device='cpu'), inference_model
    from mmdet.apis import inference_detector, init_detector
    return init_detector(cfg, checkpoint, device='cpu'), inference_detector


def main():
    args = parse_args()
    model, infer = load(args.config, args.checkpoint)
    if not isinstance(model.backbone, DynamicBackboneMixin):
        raise SystemExit(f'{type(model.backbone).__name__} is not a dynamic backbone')
    for image_path in args.images:
        image = cv2.imread(image_path)
        if image is None:
            raise SystemExit(f'cannot read image: {image_path}')
        result = infer(model, image_path)
        shape = result.metainfo['img_shape'][:2]
        rgb = cv2.resize(image[..., ::-1], (shape[1], shape[0]))
        out_dir = os.path.join(args.out_dir, Path(image_path).stem)
        paths = save_block_overlays(rgb, model.backbone.records, 0,
                                    result.metainfo['batch_input_shape'], out_dir,
                                    terms=model.backbone.mask_terms)
        print(f'{image_path}: {len(paths)} PNGs in {out_dir}')


if __name__ == '__main__':
    main()
