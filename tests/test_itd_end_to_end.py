"""ITD-ResNet end to end on the real digits data: tools/train.py with random option
fine-tuning and validation (Accuracy + SparsityMetric), and the oracle tool with resume."""
import json
import sys

import pytest

from mmdyn.datasets.digits_fixture import build_digits_fixture
from e2e_helpers import ROOT, run

BASE = ROOT / 'configs/itd_resnet/itd-r18-rof-stride_1xb64-1e_digits-32px.py'


def tiny_digits_config(path, data_root):
    """The shipped ROF digits config (ResNet-18) on 64 images per split, 3
    iterations."""
    path.write_text(f'''
_base_ = ['{BASE}']
data_root = '{data_root}'
train_dataloader = dict(batch_size=16, num_workers=0,
                        dataset=dict(data_root=data_root, indices=64))
val_dataloader = dict(batch_size=32, num_workers=0, dataset=dict(data_root=data_root, indices=64))
test_dataloader = val_dataloader
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3, val_interval=3)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=3, by_epoch=False), logger=dict(interval=1))
''')
    return path


@pytest.mark.slow
def test_digits_train_test_and_oracle(tmp_path):
    data_root = tmp_path / 'digits'
    build_digits_fixture(str(data_root), size=32)
    config = tiny_digits_config(tmp_path / 'itd_digits.py', data_root)
    work = tmp_path / 'work'
    log = run('tools/train.py', config, '--work-dir', work)
    # validation with the default permutation: mmpretrain's Accuracy beside SparsityMetric
    assert 'accuracy/top1' in log and 'sparsity/flops_ratio: 1.0000' in log
    checkpoint = work / 'iter_3.pth'
    assert checkpoint.exists()

    sys.path.insert(0, str(ROOT / 'tools/analysis'))
    import itd_oracle
    out = tmp_path / 'oracle'
    args = [str(config), str(checkpoint), '--space', 'stride=1/2,1,2', '--positions', 'C', 'D',
            '--out-dir', str(out), '--max-batches', '1', '--no-progress', '--work-dir',
            str(tmp_path / 'oracle_run')]
    itd_oracle.main(args)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['permutations'] == 9 and summary['samples'] == 32
    assert summary['worst'] <= summary['median'] <= summary['best']
    assert summary['worst'] <= summary['reference'] <= summary['best']
    accumulation = json.loads((out / 'accumulation.json').read_text())
    assert accumulation['curve'][-1] == pytest.approx(summary['best'])
    assert len(json.loads((out / 'preferences.json').read_text())) == 32
    efficiency = json.loads((out / 'efficiency.json').read_text())
    assert efficiency['macs_ratio'] <= 1.0
    for figure in ('accumulation.png', 'accuracy_vs_macs.png', 'distinct_predictions.png'):
        assert (out / figure).stat().st_size > 0
    # resume: the saved batch is reused, the summary is the same
    (out / 'summary.json').unlink()
    itd_oracle.main(args)
    assert json.loads((out / 'summary.json').read_text()) == summary


@pytest.mark.slow
def test_detection_oracle_scores_images_by_their_ap(tmp_path):
    """The oracle on a detector (ITD Faster R-CNN, COCO fixture, random init): one
    forward per permutation, per-image AP in [0, 1] as the quality."""
    from mmdyn.datasets import build_coco_fixture
    from e2e_helpers import tiny_detection_config
    coco = build_coco_fixture(tmp_path / 'coco', num_shape_images=2, image_size=128, seed=1)
    config = tiny_detection_config(tmp_path / 'itd_det.py',
                                   ROOT / 'configs/itd_resnet/faster-rcnn_itd-r50_fpn_1x_coco.py',
                                   coco, 'init_cfg=None')
    sys.path.insert(0, str(ROOT / 'tools/analysis'))
    import itd_oracle
    out = tmp_path / 'oracle'
    itd_oracle.main([str(config), 'none', '--space', 'stride=1,2', '--positions', 'D',
                     '--out-dir', str(out), '--max-batches', '2', '--no-progress',
                     '--work-dir', str(tmp_path / 'run')])
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['permutations'] == 2 and summary['samples'] >= 2
    assert 0.0 <= summary['worst'] <= summary['median'] <= summary['best'] <= 1.0
