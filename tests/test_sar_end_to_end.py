"""End-to-end runs of the SAR-ResNet configs (configs/sar_resnet) on the offline fixtures.

Every config is the shipped SAR config shrunk to ResNet-18, light heads and 128-160 px
images, with ``min_input_size`` / ``mask_size`` lowered to fit them.
"""
import json
import math
import re

import pytest
import torch

from e2e_helpers import (ROOT, logged, run, run_in_process, tiny_detection_config,
                         tiny_voc_config)
from mmdyn.datasets import build_coco_fixture

SAR = ROOT / 'configs' / 'sar_resnet'
pytestmark = pytest.mark.slow

# Small inputs: the fixtures are 128 px, detection resizes to 160 px (pads to 160).
SAR_TINY_BACKBONE = "min_input_size=128, mask_size=(4, 4, 2)"
SAR_TINY_DETECTION = f"depth=18, norm_eval=False, {SAR_TINY_BACKBONE}"
SMALL_NECK = "in_channels=[64, 128, 256, 512], "


# -- detection: a tiny twin of each SAR COCO config --------------------------------------

def sar_detection_config(path, base, data, iters=2, val=True):
    """A tiny twin of the SAR detection config ``base`` (ResNet-18 widths)."""
    return tiny_detection_config(path, SAR / base, data, SAR_TINY_DETECTION, SMALL_NECK,
                                 iters=iters, val=val)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """One offline COCO fixture (128 px) for every detection test of this module."""
    return build_coco_fixture(tmp_path_factory.mktemp('sar_coco') / 'coco',
                              num_shape_images=4, image_size=128, seed=1)


def assert_finite_losses(work_dir, *keys):
    for key in keys:
        values = [v for vs in logged(work_dir, key).values() for v in vs]
        assert values, f'{key} was never logged'
        assert all(math.isfinite(v) for v in values), (key, values)


# -- segmentation ---------------------------------------------------------------------

def test_sar_segmentation_trains_and_reports_miou_with_sparsity(tmp_path):
    """mmseg end to end: the SAR DeepLabv3 VOC config (R18, BN, 128 px crops) trains on
    the offline VOC2012 fixture, evaluates mIoU next to the sparsity, and tools/test.py
    evaluates the checkpoint (in eval, 'auto' mode runs the sparse path)."""
    from mmdyn.datasets import build_voc_fixture
    data = build_voc_fixture(tmp_path / 'voc', num_shape_images=4, image_size=128, seed=0)
    base = SAR / 'deeplabv3_sar-r50-d8-g2s4a1-t05_4xb4-20k_voc12aug-512x512.py'
    config = tiny_voc_config(tmp_path / 'deeplabv3_sar_tiny.py', base, data['data_root'],
                             SAR_TINY_BACKBONE)
    work_dir = tmp_path / 'work'
    out = run('tools/train.py', config, '--work-dir', work_dir)
    assert 'mIoU' in out and 'sparsity/activation_rate' in out
    assert 'loss_sparsity' in out
    assert (work_dir / 'iter_4.pth').is_file()
    assert_finite_losses(work_dir, 'loss_sparsity')
    assert sorted(logged(work_dir, 'loss_sparsity')) == [1, 2, 3, 4]

    # tools/test.py: sparse execution ('auto' in eval) and masked execution agree. After
    # 4 iterations the learned masks are still all on, so the test evaluates a copy of
    # the checkpoint whose region selectors are randomised (partial masks).
    checkpoint = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for key, value in checkpoint['state_dict'].items():
        if '.selector.masker.' in key:
            value.copy_(torch.randn(value.shape, generator=generator))
    torch.save(checkpoint, tmp_path / 'random_selectors.pth')
    metrics = {}
    for mode, tool in (('auto', run), ('masked', run_in_process)):  # 2nd call in-process
        out = tool('tools/test.py', config, tmp_path / 'random_selectors.pth', '--work-dir',
                  tmp_path / mode, '--cfg-options', f'model.backbone.execution_mode={mode}')
        metrics[mode] = {key: float(re.search(rf'{re.escape(key)}: ([0-9.]+)', out).group(1))
                         for key in ('mIoU', 'sparsity/activation_rate')}
    rate = metrics['auto']['sparsity/activation_rate']
    assert 0.05 < rate < 0.95  # partial masks
    # Float rounding may flip a borderline decision or pixel, nothing more.
    assert rate == pytest.approx(metrics['masked']['sparsity/activation_rate'], abs=0.02)
    assert metrics['auto']['mIoU'] == pytest.approx(metrics['masked']['mIoU'], abs=0.05)


# -- detection ------------------------------------------------------------------------

def test_sar_mask_rcnn_trains_one_step_on_coco_fixture(coco, tmp_path):
    """The SAR Mask R-CNN config (R18, light heads, 160 px) trains two iterations on the
    COCO fixture and validates with CocoMetric bbox + segm and SparsityMetric."""
    config = sar_detection_config(tmp_path / 'mask_rcnn_sar_tiny.py',
                                   'mask-rcnn_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py', coco,
                                   iters=2)
    work_dir = tmp_path / 'work'
    # tools/train.py runs as a subprocess in the segmentation test
    out = run_in_process('tools/train.py', config, '--work-dir', work_dir)
    assert 'loss_mask' in out and 'loss_sparsity' in out
    assert 'sparsity/activation_rate' in out
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out
    assert (work_dir / 'iter_2.pth').is_file()
    assert_finite_losses(work_dir, 'loss_sparsity', 'loss_mask')


@pytest.mark.parametrize('base', [
    'retinanet_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py',
    'faster-rcnn_sar-r50-g4s4a2b1-t05_fpn_1x_coco.py',
])
def test_sar_retinanet_and_faster_rcnn_train_a_step(coco, tmp_path, base):
    """One training iteration of the SAR RetinaNet (G2s2a2b1) and Faster R-CNN
    (G4s4a2b1) configs, shrunk to R18; no validation."""
    config = sar_detection_config(tmp_path / 'sar_tiny.py', base, coco, iters=1, val=False)
    work_dir = tmp_path / 'work'
    out = run_in_process('tools/train.py', config, '--work-dir', work_dir)  # as above
    assert 'loss_sparsity' in out
    assert (work_dir / 'iter_1.pth').is_file()
    assert_finite_losses(work_dir, 'loss_sparsity')


def test_sar_sparsity_histograms(coco, tmp_path):
    """tools/analysis/sparsity_histograms.py on the tiny SAR RetinaNet (random init)."""
    config = sar_detection_config(tmp_path / 'retinanet_sar_tiny.py',
                                   'retinanet_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py', coco)
    out = tmp_path / 'histograms'
    run('tools/analysis/sparsity_histograms.py', config, 'none', '--out-dir', out)
    stats = json.loads((out / 'per_image.json').read_text())
    assert len(stats) == coco['num_images']['val']
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['images'] == len(stats)
    rates = summary['activation_rate']
    assert 0.0 <= rates['min'] <= rates['median'] <= rates['max'] <= 1.0
    for image in stats:
        assert 0.0 <= image['activation_rate'] <= 1.0
        assert image['backbone_flops_executed'] <= 1.01 * image['backbone_flops_dense']
    assert (out / 'histograms.png').stat().st_size > 1000
