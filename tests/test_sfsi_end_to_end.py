"""End-to-end runs of the SFSI-ResNet configs (configs/sfsi_resnet) on the offline
fixtures: a DeepLabv3 step on Cityscapes and a Faster R-CNN (DCN) step on COCO, shrunk
to SFSI-ResNet-50 with base width 16 and light heads."""
import math
import re

import pytest
import torch

from e2e_helpers import (ROOT, logged, run, run_in_process, tiny_cityscapes_config,
                         tiny_detection_config)
from mmdyn.analysis.sfsi import evaluate
from mmdyn.datasets import build_cityscapes_fixture, build_coco_fixture

SFSI = ROOT / 'configs' / 'sfsi_resnet'
pytestmark = pytest.mark.slow
NARROW = 'depth=50, base_channels=16, stem_channels=16'


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Small tensors: the tools run with one intra-op thread (on busy shared cores
    OpenMP's waits dominate)."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process evaluation too
    yield
    torch.set_num_threads(threads)


def assert_finite(work_dir, *keys):
    for key in keys:
        values = [v for vs in logged(work_dir, key).values() for v in vs]
        assert values, f'{key} was never logged'
        assert all(math.isfinite(v) for v in values), (key, values)


def test_sfsi_deeplabv3_trains_and_evaluates_reproducibly(tmp_path):
    """DeepLabv3 + SFSI-ResNet-50 (w=0.1, OS8) trains two iterations on the Cityscapes
    fixture with loss_sparsity and the temperature schedule (no validation); tools/test.py
    evaluates the checkpoint (sparse: 'auto' in eval) and, with the same sampling seed,
    the masked execution (in-process, mmengine's Runner) gives the same mIoU and
    sparsity (same stochastic masks)."""
    data = build_cityscapes_fixture(tmp_path / 'cityscapes', num_images_per_split=2,
                                    size=(128, 256))
    base = tiny_cityscapes_config(
        tmp_path / 'base.py', SFSI / 'deeplabv3_sfsi-r50-d8-w01_4xb2-80k_cityscapes-512x1024.py',
        data['root'])
    config = tmp_path / 'deeplabv3_sfsi_tiny.py'
    config.write_text(f"_base_ = ['{base}']\nmodel = dict(backbone=dict({NARROW}), "
                      "decode_head=dict(in_channels=512), auxiliary_head=dict(in_channels=256))\n"
                      "val_cfg = None\nval_dataloader = None\nval_evaluator = None\n")
    work_dir = tmp_path / 'work'
    out = run('tools/train.py', config, '--work-dir', work_dir)
    assert 'loss_sparsity' in out
    assert_finite(work_dir, 'loss_sparsity', 'flops_ratio', 'loss')
    temperatures = logged(work_dir, 'temperature')
    assert temperatures[1] == [pytest.approx(1.0)] and temperatures[2] == [pytest.approx(0.01)]
    out = run('tools/test.py', config, work_dir / 'iter_2.pth', '--work-dir', tmp_path / 'auto',
              '--cfg-options', 'model.backbone.sampling_seed=3')
    sparse = [float(re.search(rf'{re.escape(key)}: ([0-9.]+)', out).group(1))
              for key in ('mIoU', 'sparsity/activation_rate')]
    masked = evaluate(str(config), str(work_dir / 'iter_2.pth'), tmp_path, 'masked',
                      {'model.backbone.execution_mode': 'masked',
                       'model.backbone.sampling_seed': 3})
    assert 0.0 < sparse[1] < 1.0
    assert sparse == pytest.approx([masked['mIoU'], masked['sparsity/activation_rate']],
                                   abs=1e-2)


def test_sfsi_faster_rcnn_with_dcn_trains_a_step(tmp_path):
    """One training iteration of the paper's detector (Faster R-CNN, DCNv2 in conv3-5,
    grid prior) on the COCO fixture, then validation with CocoMetric + SparsityMetric
    (sparse execution with deformable taps)."""
    coco = build_coco_fixture(tmp_path / 'coco', num_shape_images=4, image_size=128, seed=1)
    config = tiny_detection_config(
        tmp_path / 'faster_rcnn_sfsi_tiny.py', SFSI / 'faster-rcnn_sfsi-r101-dcn-w01_fpn_1x_coco.py',
        coco, f'{NARROW}, frozen_stages=-1, norm_eval=False, init_cfg=None',
        'in_channels=[64, 128, 256, 512], ', iters=1, val=True)
    work_dir = tmp_path / 'work'
    # tools/train.py runs as a subprocess in the DeepLabv3 test
    out = run_in_process('tools/train.py', config, '--work-dir', work_dir)
    assert 'coco/bbox_mAP' in out
    assert 0.0 < float(re.search(r'sparsity/activation_rate: ([0-9.]+)', out).group(1)) <= 1.0
    assert_finite(work_dir, 'loss_sparsity', 'loss_rpn_cls', 'loss_cls')
