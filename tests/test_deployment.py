"""Deployment steps: mmcv's fuse_conv_bn on every backbone in every execution mode
(same outputs as before it), and the sparse path folding the BatchNorms of the static
parts (stem, static blocks, base branches, transitions, projections) by itself."""
import pytest
import torch
from mmcv.cnn import fuse_conv_bn
from torch.nn.modules.batchnorm import _BatchNorm

from backbone_table import CASES

TOLERANCE = 1e-4  # relative (max-abs / max-abs of the reference): float32 rounding


def max_relative_error(got, want):
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
               for a, b in zip(got, want))


def outputs(model, mode, x):
    model.set_execution_mode(mode)
    with torch.no_grad():
        return [o.clone() for o in model(x)]


@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_fuse_conv_bn_keeps_the_outputs_of_every_mode(case):
    """Regression: LAS-ResNet's fused conv1+gate cache read ``norm1.weight`` and
    crashed once fuse_conv_bn had replaced norm1 by an nn.Identity. The fold caches
    filled by the sparse forward before the fold must not be reused after it."""
    model = case.build()
    x = case.input()
    before = {mode: outputs(model, mode, x) for mode in case.modes}
    for mode in case.modes[1:]:  # the modes agree before the fold
        assert max_relative_error(before[mode], before[case.modes[0]]) < TOLERANCE, mode
    fuse_conv_bn(model)  # in place, after the sparse forward filled the caches
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    for mode in case.modes:
        assert max_relative_error(outputs(model, mode, x), before[mode]) < TOLERANCE, mode


def batchnorm_calls(model, mode, x):
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        result = outputs(model, mode, x)
    finally:
        for handle in handles:
            handle.remove()
    return len(calls), result


@pytest.mark.parametrize('case', [c for c in CASES if c.sparse_folds_batchnorm],
                         ids=lambda c: c.name)
def test_sparse_eval_folds_the_batchnorms_of_the_static_parts(case):
    """A plain ``model.eval()`` sparse model runs no BatchNorm layer at all (every one
    is folded into its conv, static parts included) and gives the unfolded reference
    mode's outputs; the folds follow changed BatchNorm statistics."""
    model = case.build()
    x = case.input(seed=2)
    reference_calls, reference = batchnorm_calls(model, case.modes[0], x)
    sparse_calls, sparse = batchnorm_calls(model, 'sparse', x)
    assert reference_calls > 0
    assert sparse_calls == 0
    assert max_relative_error(sparse, reference) < TOLERANCE
    with torch.no_grad():  # the folds are caches: a new statistic must reach them
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.running_var.mul_(1.5)
    changed = outputs(model, case.modes[0], x)
    assert max_relative_error(changed, reference) > 1e-3
    assert max_relative_error(outputs(model, 'sparse', x), changed) < TOLERANCE
