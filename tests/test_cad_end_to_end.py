"""End-to-end runs of the CAD-ResNet configs (configs/cad_resnet) on the offline fixtures.

Each run takes a shipped config and shrinks it: CAD-ResNet-50 (the shipped detectors'
depth; the Cityscapes configs use 101), BN instead of SyncBN, light heads, 128 x 256
Cityscapes crops or 160 px COCO images. The masks, losses, hooks, strides and evaluators
stay the shipped ones.
"""
import json
import math
import pickle
import re

import pytest

from e2e_helpers import (ROOT, logged, run, run_in_process, tiny_cityscapes_config,
                         tiny_detection_config)
from mmdyn.datasets import build_cityscapes_fixture, build_coco_fixture

CAD = ROOT / 'configs' / 'cad_resnet'
pytestmark = pytest.mark.slow

SEGMENTATION = {
    'learned': 'deeplabv3_cad-r101-d8-learned-t05-os16to8_4xb2-80k_cityscapes-512x1024.py',
    'edge': 'pspnet_cad-r101-d8-edge035-os16to8_4xb2-80k_cityscapes-512x1024.py',
}
ITERS = 2


@pytest.fixture(scope='module')
def cityscapes(tmp_path_factory):
    return build_cityscapes_fixture(tmp_path_factory.mktemp('cad_cityscapes') / 'cityscapes',
                                    num_images_per_split=2, size=(128, 256))


def logged_metric(out, key):
    return float(re.search(rf'{re.escape(key)}: ([0-9.]+)', out).group(1))


def predictions(path):
    with open(path, 'rb') as f:
        return [sample['pred_sem_seg']['data'] for sample in pickle.load(f)]


def assert_finite(work_dir, *keys):
    for key in keys:
        values = [v for vs in logged(work_dir, key).values() for v in vs]
        assert values, f'{key} was never logged'
        assert all(math.isfinite(v) for v in values), (key, values)


# -- segmentation ---------------------------------------------------------------------

def evaluate(config, checkpoint, tmp_path, name, *options, tool=run):
    """tools/test.py on ``checkpoint``: (activation rate, per-image predicted maps).
    ``tool=run_in_process`` for a test's later calls (the first one is a subprocess)."""
    out = tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path / name,
               '--out', tmp_path / f'{name}.pkl', '--cfg-options', *options)
    assert 'mIoU' in out
    return logged_metric(out, 'sparsity/activation_rate'), predictions(tmp_path / f'{name}.pkl')


def assert_same_predictions(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        # Float rounding (BatchNorm folding) may flip a borderline pixel, nothing more.
        assert (x == y).float().mean() > 0.99


def test_cad_learned_mask_segmentation(cityscapes, tmp_path):
    """DeepLabv3 + CAD (learned mask, t=0.5) trains on the Cityscapes fixture with
    KeepRatioLoss and the Gumbel temperature, then validates mIoU + SparsityMetric; the
    checkpoint evaluates the same in sparse ('auto' in eval) and dense execution."""
    config = tiny_cityscapes_config(tmp_path / 'deeplabv3_cad_learned_tiny.py',
                                    CAD / SEGMENTATION['learned'], cityscapes['root'])
    work_dir = tmp_path / 'work'
    out = run('tools/train.py', config, '--work-dir', work_dir)
    assert 'loss_sparsity' in out and 'keep_ratio' in out
    assert 'mIoU' in out and 'sparsity/activation_rate' in out
    assert_finite(work_dir, 'loss_sparsity', 'keep_ratio', 'loss')
    assert sorted(logged(work_dir, 'loss_sparsity')) == list(range(1, ITERS + 1))
    assert logged(work_dir, 'temperature')[ITERS] == [pytest.approx(1.0)]
    rate = logged_metric(out, 'sparsity/activation_rate')
    assert 0.0 < rate <= 1.0
    checkpoint = work_dir / f'iter_{ITERS}.pth'
    assert checkpoint.is_file()

    # After two iterations the mask CNN is near its random init; its deterministic
    # (eval) decisions may keep every block: partial masks are the edge test's job.
    sparse_rate, sparse = evaluate(config, checkpoint, tmp_path, 'auto',
                                   'model.backbone.execution_mode=auto')
    dense_rate, dense = evaluate(config, checkpoint, tmp_path, 'dense',
                                 'model.backbone.execution_mode=dense', tool=run_in_process)
    assert sparse_rate == pytest.approx(rate, abs=1e-6)
    assert dense_rate == pytest.approx(rate, abs=1e-6)
    assert_same_predictions(sparse, dense)


def test_cad_edge_mask_segmentation(cityscapes, tmp_path):
    """PSPNet + CAD (edge mask, threshold 0.35): no sparsity loss, no temperature; trains
    and validates mIoU next to the full-resolution rate (partial masks). tools/test.py: sparse ('auto') and dense execution agree,
    and so does sparse execution with the shipped SyncBN (which the single-process
    runner reverts to mmengine's _BatchNormXd)."""
    # The fixture is 1/8 of Cityscapes' resolution: the 11 px edge dilation shrinks to
    # 1 px (with 11 px nearly every block of a 128 x 256 street scene keeps full
    # resolution); the threshold stays 0.35.
    config = tiny_cityscapes_config(tmp_path / 'pspnet_cad_edge_tiny.py',
                                    CAD / SEGMENTATION['edge'], cityscapes['root'],
                                    'mask_source=dict(dilation=1)')
    work_dir = tmp_path / 'work'
    out = run('tools/train.py', config, '--work-dir', work_dir)
    assert 'loss_sparsity' not in out and not logged(work_dir, 'temperature')
    assert 'mIoU' in out and 'sparsity/activation_rate' in out
    assert_finite(work_dir, 'loss', 'decode.loss_ce')
    rate = logged_metric(out, 'sparsity/activation_rate')
    assert 0.05 < rate < 0.95
    checkpoint = work_dir / f'iter_{ITERS}.pth'

    dense_rate, dense = evaluate(config, checkpoint, tmp_path, 'dense',
                                 'model.backbone.execution_mode=dense')
    sparse_rate, sparse = evaluate(config, checkpoint, tmp_path, 'auto',
                                   'model.backbone.execution_mode=auto', tool=run_in_process)
    assert dense_rate == sparse_rate == pytest.approx(rate, abs=1e-6)  # input-only masks
    assert_same_predictions(sparse, dense)
    sync_rate, sync = evaluate(config, checkpoint, tmp_path, 'auto_syncbn',
                               'model.backbone.execution_mode=auto',
                               'model.backbone.norm_cfg.type=SyncBN', tool=run_in_process)
    assert sync_rate == pytest.approx(rate, abs=1e-6)
    assert_same_predictions(sync, dense)


# -- detection ------------------------------------------------------------------------

# CAD-ResNet-50 with random weights, trainable from the stem (no pretrained weights to
# freeze); the shipped strides, anchors and RoI extractors stay.
BACKBONE = "frozen_stages=-1, norm_eval=False, init_cfg=None"



@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    return build_coco_fixture(tmp_path_factory.mktemp('cad_coco') / 'coco',
                              num_shape_images=4, image_size=128, seed=1)




@pytest.mark.parametrize('base, val', [
    ('mask-rcnn_cad-r50-edge035-os32to8_fpn_1x_coco.py', True),
    ('faster-rcnn_cad-r50-edge035-os16to8_fpn_1x_coco.py', False),
    ('retinanet_cad-r50-edge035-os32to8_fpn_1x_coco.py', False),
], ids=['mask-rcnn', 'faster-rcnn', 'retinanet'])
def test_cad_detectors_train_a_step(coco, tmp_path, base, val):
    """One training iteration of each CAD COCO config (edge masks, CAD-ResNet-50, strides
    4/8/8/8, light heads, 160 px); Mask R-CNN then validates with CocoMetric bbox + segm
    and SparsityMetric (sparse execution on the detection inputs)."""
    config = tiny_detection_config(tmp_path / 'cad_tiny.py', CAD / base, coco, BACKBONE, val=val)
    work_dir = tmp_path / 'work'
    # tools/train.py runs as a subprocess in the segmentation tests
    out = run_in_process('tools/train.py', config, '--work-dir', work_dir)
    assert 'loss_sparsity' not in out
    assert (work_dir / 'iter_1.pth').is_file()
    losses = ['loss_rpn_cls', 'loss_bbox', 'loss_mask'] if val else \
        ['loss_cls', 'loss_bbox'] if base.startswith('retinanet') else ['loss_rpn_cls', 'loss_cls']
    assert_finite(work_dir, 'loss', *losses)
    if val:
        assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out
        assert 0.0 < logged_metric(out, 'sparsity/activation_rate') <= 1.0


def test_config_benchmark_with_the_coarse_twin_writes_json(tmp_path):
    """CAD against both ends of its range from its config: the dilated OS8 twin and the
    strided OS16 one (``--coarse-twin``), its own edge masks on a photo and forced keeps;
    and the OS8 twin on mmdyn's engine (``--engine-twin``)."""
    out = tmp_path / 'cad.json'
    printed = run('tools/analysis/benchmark_latency.py',
                  'configs/cad_resnet/faster-rcnn_cad-r50-edge035-os16to8_fpn_1x_coco.py',
                  '--coarse-twin', '--engine-twin', '--rates', '0', '0.3', 'source',
                  '--image', 'coffee', '--input', '64', '128', '--threads', '1',
                  '--warmup', '0', '--repeats', '1', '--out', out)
    rows = json.loads(out.read_text())['rows']
    assert all(r['latency_over_engine'] == pytest.approx(r['latency_ratio'] / r['engine_ratio'])
               for r in rows)
    assert 'lat/interp' in printed and 'lat/engine' in printed
    none, some, edges = rows
    # every cell downsampled is the strided network: its operator-level count
    assert none['gflops_executed'] == pytest.approx(none['gflops_coarse'], rel=1e-9)
    for row in (some, edges):
        assert row['gflops_coarse'] < row['gflops_executed'] <= row['gflops_static']
        assert row['coarse_s'] > 0 and row['interpolated_s'] > 0
        assert row['latency_over_interpolated'] == pytest.approx(
            row['dynamic_s'] / row['interpolated_s'])
