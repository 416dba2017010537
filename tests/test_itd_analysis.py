"""Oracle summaries, greedy accumulation and the efficient oracle against brute force /
hand-computed values; the random-option hook's reproducibility; the digits fixture read
by mmpretrain's CustomDataset; DynImageClassifier's loss and sparsity statistics."""
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mmdyn  # noqa: F401
from mmdyn.analysis.itd import (OracleResults, efficient_oracle, greedy_accumulation,
                                image_miou, oracle_summary, ranked_quality)
from mmdyn.datasets.digits_fixture import (build_digits_fixture, check_digits_root,
                                           split_indices)
from mmdyn.engine import RandomOptionHook
from mmdyn.models.backbones import ITDResNet
from mmdyn.ops import ConvOption


def results_from(quality, scores=None, predictions=None, macs=None):
    quality = np.asarray(quality, float)
    count = quality.shape[0]
    return OracleResults(
        permutations=[(ConvOption(s),) for s in (1, 2, 3, 4)][:count],
        scores=quality if scores is None else np.asarray(scores, float),
        quality=quality,
        predictions=np.zeros_like(quality, int) if predictions is None else np.asarray(predictions),
        macs=np.ones_like(quality) if macs is None else np.asarray(macs, float))


def test_best_median_worst_by_hand():
    # 3 permutations x 4 samples; score = confidence + correct
    correct = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]])
    confidence = np.array([[.9, .2, .1, .6], [.7, .8, .3, .2], [.1, .6, .2, .7]])
    best, median, worst = ranked_quality(confidence + correct, correct)
    assert best.tolist() == [1, 1, 0, 1]
    assert median.tolist() == [1, 1, 0, 1]  # sample 3: 1.6 (p0) is the middle score
    assert worst.tolist() == [0, 0, 0, 0]
    summary = oracle_summary(results_from(correct, confidence + correct))
    assert summary['best'] == 0.75 and summary['worst'] == 0.0
    assert summary['reference'] == 0.5 and summary['best_static'] == 0.5


def test_greedy_accumulation_against_brute_force():
    rng = np.random.default_rng(0)
    correct = (rng.random((7, 40)) < 0.4).astype(float)
    chosen, curve = greedy_accumulation(correct)
    assert curve[0] == correct.mean(axis=1).max()
    assert curve[-1] == correct.max(axis=0).mean()
    assert all(a <= b for a, b in zip(curve, curve[1:]))
    assert len(set(chosen)) == len(chosen) == 7
    def optimum(k):
        return max(correct[list(c)].max(axis=0).mean()
                   for c in itertools.combinations(range(7), k))
    assert curve[0] == pytest.approx(optimum(1))  # greedy is optimal for one permutation
    assert curve[1] <= optimum(2) + 1e-12 and curve[2] <= optimum(3) + 1e-12


def test_efficient_oracle_takes_the_cheapest_agreeing_permutation():
    predictions = np.array([[3, 1, 2], [3, 0, 2], [5, 1, 2]])  # row 0 = reference
    quality = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0]], float)
    macs = np.array([[10, 10, 10], [4, 4, 4], [2, 2, 2]], float)
    out = efficient_oracle(results_from(quality, predictions=predictions, macs=macs))
    # sample 0: p1 (4 MACs) agrees, p2 does not; sample 1: p2 (2); sample 2: p2 (2)
    assert out['efficient_gmacs'] == pytest.approx((4 + 2 + 2) / 3 / 1e9)
    assert out['macs_ratio'] == pytest.approx(8 / 30)
    assert out['accuracy'] == out['reference_accuracy'] == pytest.approx(2 / 3)


def test_image_miou_by_hand():
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    prediction = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 2]])
    # class 0: 3/4, class 1: 2/4 (pred {01,02,03}, truth {02,03,12}), class 2: 0/1
    assert image_miou(prediction, truth) == pytest.approx((0.75 + 0.5 + 0.0) / 3)


def test_random_option_hook_is_a_function_of_the_iteration():
    backbone = ITDResNet(depth=18)
    model = torch.nn.Sequential(backbone)
    runner = SimpleNamespace(model=model, iter=0)
    hook = RandomOptionHook(space=dict(stride=(1, 2, 3)), seed=3)
    hook.before_train(runner)
    drawn = []
    for iteration in (0, 1, 2, 1):
        runner.iter = iteration
        hook.before_train_iter(runner, iteration)
        drawn.append(backbone.permutation)
    assert drawn[1] == drawn[3]  # a resumed run draws the same permutation
    assert len({drawn[0], drawn[1], drawn[2]}) > 1
    assert all(o.stride in (1, 2, 3) for p in drawn for o in p)
    hook.before_val_epoch(runner)
    assert backbone.permutation == backbone.default_permutation
    with pytest.raises(ValueError, match='space='):
        RandomOptionHook(space=dict(padding=(1,))).before_train(runner)
    with pytest.raises(TypeError, match='ITD backbone'):
        RandomOptionHook(space=dict(stride=(1,))).before_train(
            SimpleNamespace(model=torch.nn.Linear(1, 1)))


def test_digits_fixture_split_and_layout(tmp_path):
    from mmpretrain.datasets import CustomDataset
    from sklearn.datasets import load_digits
    labels = load_digits().target
    splits = split_indices(labels)
    assert sum(len(v) for v in splits.values()) == len(labels) == 1797
    assert not set(splits['train']) & set(splits['test'])
    again = split_indices(labels)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    info = build_digits_fixture(str(tmp_path), size=16)
    assert info['counts'] == {split: len(v) for split, v in splits.items()}
    assert check_digits_root(str(tmp_path))['size'] == 16
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # what an mmpretrain config sets
        data = CustomDataset(data_root=str(tmp_path), data_prefix='test',
                             ann_file='meta/test.txt', classes=info['classes'],
                             pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])
    assert len(data) == info['counts']['test']
    sample = data[0]
    index = int(splits['test'][0])
    assert sample['inputs'].shape == (3, 16, 16)
    assert int(sample['data_samples'].gt_label) == int(labels[index])
    folders = CustomDataset(data_root=str(tmp_path), data_prefix='val')  # class folders
    assert len(folders) == info['counts']['val'] and list(folders.CLASSES) == info['classes']
    (tmp_path / 'meta' / 'info.json').unlink()
    with pytest.raises(FileNotFoundError, match='meta/info.json'):
        check_digits_root(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        check_digits_root(str(tmp_path / 'missing'))


def test_dyn_image_classifier_loss_and_sparsity_statistics():
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    from mmdyn.evaluation import SparsityMetric
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='DynImageClassifier', sparsity_loss=None,
            backbone=dict(type='ITDResNet', depth=18, out_indices=(3, ), init_cfg=None),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=512)))
    samples = [DataSample().set_gt_label(i) for i in (1, 7)]
    losses = model.loss(torch.randn(2, 3, 32, 32), samples)
    assert set(losses) == {'loss'}  # no sparsity loss configured
    model.eval()
    model.backbone.set_permutation(stride=(1, 2, 3, 2))
    with torch.no_grad():
        predictions = model.predict(torch.randn(2, 3, 32, 32), samples)
    stats = predictions[0].metainfo['sparsity']
    assert stats['backbone_flops_executed'] == model.backbone.macs((32, 32),
                                                                   model.backbone.permutation)
    assert stats['backbone_flops_dense'] == model.backbone.macs((32, 32))
    metric = SparsityMetric(per_block=False)
    metric.process(None, [p.to_dict() for p in predictions])
    out = metric.compute_metrics(metric.results)
    assert out['flops_ratio'] == pytest.approx(stats['backbone_flops_executed']
                                               / stats['backbone_flops_dense'])
    json.dumps(out)


def test_torchvision_placeholder_fails_clearly_when_used():
    import sys
    from mmdyn.utils.torchvision_placeholder import install
    torchvision = sys.modules['torchvision']  # imported by mmpretrain through mmdyn
    assert install() is False  # never twice, never over a real torchvision
    if getattr(torchvision, '__mmdyn_placeholder__', False):
        import torchvision.ops.boxes as boxes
        with pytest.raises(ImportError, match='torchvision.ops.boxes.box_iou needs torchvision'):
            boxes.box_iou(torch.zeros(1, 4), torch.zeros(1, 4))
        with pytest.raises(ModuleNotFoundError):
            torchvision.__version__
    else:
        assert hasattr(torchvision, '__version__')


def test_image_ap_by_hand():
    from mmdyn.analysis.itd import image_ap
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    labels = [0, 1]
    # ground truth as prediction: AP 1 for both classes
    assert image_ap(gt, [0.9, 0.8], labels, gt, labels) == pytest.approx(1.0)
    # nothing detected, or a box of IoU < 0.5 (shifted by 6 px): AP 0
    assert image_ap(np.zeros((0, 4)), [], [], gt, labels) == 0.0
    assert image_ap([[6, 0, 16, 10]], [0.9], [0], gt[:1], labels[:1]) == 0.0
    # class 0 has two boxes, one found (recall 1/2 at precision 1): AP 0.5
    two = [[0, 0, 10, 10], [40, 40, 50, 50]]
    assert image_ap([[0, 0, 10, 10]], [0.9], [0], two, [0, 0]) == pytest.approx(0.5)
    # a false positive ranked above the true one halves the precision there
    assert image_ap([[60, 60, 70, 70], [0, 0, 10, 10]], [0.9, 0.5], [0, 0], gt[:1],
                    [0]) == pytest.approx(0.5)
    # no ground truth: 1 if nothing is detected
    assert image_ap(np.zeros((0, 4)), [], [], np.zeros((0, 4)), []) == 1.0
    assert image_ap([[0, 0, 5, 5]], [0.3], [2], np.zeros((0, 4)), []) == 0.0
