"""CAD-ResNet: multi-resolution ops, Guarantee 2, dense == sparse, masks, errors."""
import functools

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmseg.models.backbones import ResNetV1c
from skimage import data as skdata

from mmdyn.models.backbones import CADResNet
from mmdyn.models.losses import KeepRatioLoss
from mmdyn.models.mask_sources import EdgeMask
from mmdyn.ops.gemm import GATHER_GEMM
from mmdyn.ops.kernel_choice import ENV_PINS
from mmdyn.ops.multires import (CellLayout, adaptive_downsample, check_keep_mask,
                                conv3x3_rows, dense_to_rows, fill_cells, rows_to_dense,
                                step_levels)

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def real_images(height=64, width=96):
    """Two normalised RGB photos from skimage, as mmseg's data preprocessor gives."""
    images = [cv2.resize(img, (width, height)) for img in (skdata.astronaut(), skdata.coffee())]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return (batch - MEAN) / STD


# -- ops --------------------------------------------------------------------------------

def test_quadtree_steps_only_downsample_blocks_still_at_the_lowest_level():
    levels = torch.zeros(1, 8, 8, dtype=torch.long)
    keep1 = torch.ones(1, 4, 4, dtype=torch.bool)
    keep1[0, :2, :2] = False        # top-left 4x4 block: all four 2x2 cells downsampled
    keep1[0, 2, 2] = False          # one 2x2 cell of the bottom-right block
    levels = step_levels(levels, keep1, 1)
    assert int((levels == 1).sum()) == 16 + 4
    levels = step_levels(levels, torch.zeros(1, 2, 2, dtype=torch.bool), 2)
    assert bool((levels[0, :4, :4] == 2).all())          # eligible: all at level 1
    assert bool((levels[0, 4:, 4:] <= 1).all())          # mixed block: stays
    layout = CellLayout.from_levels(levels)
    assert layout.num_cells == 1 + 2 * 16 + (12 + 1)     # 4x4 cell, two fine blocks, mixed


def test_cover_points_every_pixel_at_its_cells_top_left():
    generator = torch.Generator().manual_seed(0)
    levels = torch.zeros(2, 7, 9, dtype=torch.long)
    levels = step_levels(levels, torch.rand(2, 4, 5, generator=generator) > 0.5, 1)
    layout = CellLayout.from_levels(levels)
    positions = layout.positions
    for b in range(2):
        for y in range(7):
            for x in range(9):
                size = 2 ** int(levels[b, y, x])
                row = int(layout.cover[(b * 7 + y) * 9 + x])
                assert positions[row].tolist() == [b, y - y % size, x - x % size]


@pytest.mark.parametrize('dilation', [1, 2, 4])
def test_cell_conv_equals_dense_conv_on_the_filled_map(dilation):
    """The modified submanifold conv: a dense dilated conv on the filled map, read at
    the active cells, equals the row conv (taps reading their cells' values)."""
    generator = torch.Generator().manual_seed(1)
    levels = step_levels(torch.zeros(2, 9, 11, dtype=torch.long),
                         torch.rand(2, 5, 6, generator=generator) > 0.6, 1)
    layout = CellLayout.from_levels(levels)
    x = fill_cells(torch.randn(2, 8, 9, 11, generator=generator), layout)
    weight, bias = torch.randn(5, 8, 3, 3, generator=generator), torch.randn(5)
    dense = F.conv2d(x, weight, bias, padding=dilation, dilation=dilation)
    matrix = weight.permute(0, 2, 3, 1).reshape(5, -1).t()
    rows = conv3x3_rows(dense_to_rows(x, layout), layout.tap_rows(layout.positions, dilation),
                        matrix, bias)
    assert torch.allclose(rows, dense_to_rows(dense, layout), atol=1e-5)
    assert torch.allclose(rows_to_dense(rows, layout), fill_cells(dense, layout), atol=1e-5)


def test_adaptive_downsample_modes():
    x = torch.arange(16.).view(1, 1, 4, 4)
    keep = torch.tensor([[[False, True], [True, True]]])
    levels = torch.zeros(1, 4, 4, dtype=torch.long)
    strided, new_levels = adaptive_downsample(x, levels, keep, 1, 'strided')
    assert strided[0, 0, :2, :2].eq(0).all() and torch.equal(strided[0, 0, 2:], x[0, 0, 2:])
    maxed, _ = adaptive_downsample(x, levels, keep, 1, 'max')
    assert maxed[0, 0, :2, :2].eq(5).all()
    averaged, _ = adaptive_downsample(x, levels, keep, 1, 'avg')
    assert averaged[0, 0, :2, :2].eq(2.5).all()
    assert int((new_levels == 1).sum()) == 4
    with pytest.raises(ValueError, match='mode'):
        adaptive_downsample(x, levels, keep, 1, 'median')


@pytest.mark.parametrize('mask, error, message', [
    (torch.ones(1, 3, 3, dtype=torch.bool), ValueError, 'must have shape'),
    (torch.ones(1, 2, 2, dtype=torch.complex64), TypeError, 'bool, integer or float'),
    (torch.full((1, 2, 2), 0.5), ValueError, 'only 0 and 1'),
    ('yes', TypeError, 'tensor'),
])
def test_bad_keep_masks_are_refused(mask, error, message):
    with pytest.raises(error, match=message):
        check_keep_mask(mask, (1, 2, 2))


# -- the backbone -------------------------------------------------------------------------

def randomise_batchnorm(model):
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


@functools.lru_cache(maxsize=None)
def cad(base_output_stride, mask_source='RandomMask'):
    model = CADResNet(50, base_output_stride=base_output_stride,
                      mask_source=dict(type=mask_source), init_cfg=None)
    randomise_batchnorm(model).eval()
    return model


def run(model, x, mode, masks=None, grad_mode=torch.no_grad):
    model.set_execution_mode(mode)
    model.set_masks(masks)
    try:
        with grad_mode():
            return model(x), model.records
    finally:
        model.set_masks(None)


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def keep_all(model, x, value):
    with torch.no_grad():
        features = model.layer2(model.layer1(model.stem_forward(x)[0]))
    grids = [m.shape[1:] for m in model.keep_masks(x, features)]
    return [torch.full((x.shape[0], *g), value, dtype=torch.bool) for g in grids]


@pytest.mark.parametrize('base_output_stride', [16, 32])
@pytest.mark.parametrize('mode', ['dense', 'sparse'])
@pytest.mark.parametrize('size', [(64, 96), (70, 90)])
def test_guarantee_2_strided_and_dilated_networks(base_output_stride, mode, size):
    """Same weights, loaded unchanged: every block downsampled == the strided ResNetV1c
    at its positions; every block kept == the dilated ResNetV1c."""
    model = cad(base_output_stride)
    strided = ResNetV1c(depth=50, contract_dilation=True,
                        strides=(1, 2, 2, 1) if base_output_stride == 16 else (1, 2, 2, 2),
                        dilations=(1, 1, 1, 2) if base_output_stride == 16 else (1, 1, 1, 1))
    dilated = ResNetV1c(depth=50, contract_dilation=True, strides=(1, 2, 1, 1),
                        dilations=(1, 1, 2, 4))
    for net in (strided, dilated):
        net.load_state_dict(model.state_dict(), strict=True)
        net.eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want_strided, want_dilated = strided(x), dilated(x)
    coarse, _ = run(model, x, mode, keep_all(model, x, False))
    fine, _ = run(model, x, mode, keep_all(model, x, True))
    step4 = 2 if base_output_stride == 16 else 4
    assert relative_error(coarse[2][:, :, ::2, ::2], want_strided[2]) < 1e-4
    assert relative_error(coarse[3][:, :, ::step4, ::step4], want_strided[3]) < 1e-4
    for got, want in zip(fine, want_dilated):
        assert relative_error(got, want) < 1e-4


@pytest.mark.parametrize('base_output_stride', [16, 32])
@pytest.mark.parametrize('keep_ratio', [0.0, 0.3, 1.0])
@pytest.mark.parametrize('gather', ['torch', 'native_onednn_packed'])
def test_sparse_equals_dense_reference(base_output_stride, keep_ratio, gather, monkeypatch):
    """Both gather-GEMM kernels (the native one where built), the sparse forward
    under inference mode as deployments call it."""
    if gather not in GATHER_GEMM.candidates:
        pytest.skip(f'{gather} is not available in this torch build')
    monkeypatch.setenv(ENV_PINS, f'gather_gemm={gather}')
    model = cad(base_output_stride)
    x = torch.randn(2, 3, 70, 90)
    masks = [torch.rand(2, *m.shape[1:]) < keep_ratio for m in keep_all(model, x, True)]
    dense, dense_record = run(model, x, 'dense', masks)
    sparse, sparse_record = run(model, x, 'sparse', masks, torch.inference_mode)
    for a, b in zip(sparse, dense):
        assert relative_error(a, b) < 1e-4
    assert torch.equal(sparse_record.executed_flops, dense_record.executed_flops)


def test_executed_flops_follow_the_cells():
    model = cad(16)
    x = torch.randn(1, 3, 64, 96)
    _, fine = run(model, x, 'sparse', keep_all(model, x, True))
    _, coarse = run(model, x, 'sparse', keep_all(model, x, False))
    _, mixed = run(model, x, 'sparse', [torch.rand(1, 4, 6) < 0.3])
    assert float(fine.executed_flops) == pytest.approx(fine.dense_flops)
    assert float(coarse.executed_flops) < float(mixed.executed_flops) < fine.dense_flops
    assert set(fine.static_flops) == {'stem', 'layer1', 'layer2'}
    rates = [float(b.activation_rate) for b in coarse.blocks]
    assert rates[0] == pytest.approx(0.25)                 # 2x2 cells: a quarter of the grid


@pytest.mark.parametrize('size', [(17, 9), (1, 1), (33, 130)])
def test_any_image_size_runs(size):
    model = cad(32)
    x = torch.randn(1, 3, *size)
    masks = [torch.rand(1, *m.shape[1:]) < 0.5 for m in keep_all(model, x, True)]
    dense, _ = run(model, x, 'dense', masks)
    sparse, _ = run(model, x, 'sparse', masks)
    for a, b in zip(sparse, dense):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()) + 1e-6)


def test_edge_masks_on_a_real_image():
    x = real_images()
    grid = [(4, 6)]
    loose = EdgeMask(threshold=0.15, dilation=3)(x, None, grid)[0]
    strict = EdgeMask(threshold=0.95, dilation=3)(x, None, grid)[0]
    wide = EdgeMask(threshold=0.95, dilation=11)(x, None, grid)[0]
    assert loose.dtype == torch.bool and loose.shape == (2, 4, 6)
    assert bool((strict <= loose).all()) and bool((strict <= wide).all())
    assert 0 < float(strict.float().mean()) < float(loose.float().mean()) <= 1
    model = CADResNet(50, mask_source=dict(type='EdgeMask', threshold=0.95, dilation=3),
                      init_cfg=None).eval()
    with torch.no_grad():
        model(x)
    assert 0.25 < float(model.sparsity_summary().activation_rate.mean()) < 1.0


def test_learned_mask_trains_through_the_dense_reference():
    model = CADResNet(50, mask_source=dict(type='LearnedMask', in_channels=512),
                      init_cfg=None).train()
    model.set_temperature(0.5)
    outputs = model(real_images())
    loss = KeepRatioLoss(target=0.3)(model.records)
    (loss['loss_sparsity'] + sum(o.mean() for o in outputs)).backward()
    source = model.mask_source
    assert source.temperature == 0.5
    assert float(source.logit_weight.grad.abs().sum()) > 0
    assert float(source.body[0].weight.grad.abs().sum()) > 0
    assert 0.0 <= float(loss['keep_ratio']) <= 1.0
    model.set_execution_mode('sparse')
    with pytest.raises(RuntimeError, match='inference-only'):
        model(real_images())


@pytest.mark.parametrize('kwargs, message', [
    (dict(depth=34), 'depth=34'),
    (dict(base_output_stride=8), 'base_output_stride=8'),
    (dict(strides=(1, 2, 2, 2)), 'output-stride-8 grid'),
    (dict(base_output_stride=32, mask_source=dict(type='LearnedMask')), 'one adaptive step'),
    (dict(mask_source=dict(type='EdgeMask', dilation=4)), 'odd positive int'),
    (dict(execution_mode='masked'), 'execution_mode'),
])
def test_bad_configuration_is_refused(kwargs, message):
    kwargs = {'depth': 50, 'init_cfg': None, **kwargs}
    with pytest.raises(ValueError, match=message):
        CADResNet(**kwargs)


def test_bad_external_masks_are_refused():
    model = cad(16)
    x = torch.randn(1, 3, 64, 96)
    with pytest.raises(ValueError, match='must have shape'):
        run(model, x, 'sparse', [torch.ones(1, 3, 3, dtype=torch.bool)])
    with pytest.raises(ValueError, match='list of 1 masks'):
        model.set_masks([torch.ones(1, 4, 6)] * 2)


def test_sparse_folds_every_batchnorm_flavour():
    """SyncBN configs run single-process as mmengine's _BatchNormXd: folded too."""
    from mmengine.model import revert_sync_batchnorm
    model = CADResNet(50, init_cfg=None, norm_cfg=dict(type='SyncBN'),
                      mask_source=dict(type='RandomMask', keep_ratio=0.5))
    model = randomise_batchnorm(revert_sync_batchnorm(model))
    model.eval()
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    x = torch.randn(1, 3, 64, 96)
    dense, _ = run(model, x, 'dense')
    sparse, _ = run(model, x, 'sparse')
    for a, b in zip(sparse, dense):
        assert relative_error(a, b) < 1e-4


def test_full_keep_takes_the_dense_route_and_mixes_with_cells(monkeypatch):
    """Every cell kept: the stages run as the output-stride-8 network (no cell
    executor); otherwise on cells (a later step only coarsens cells an earlier one
    coarsened, so a full first step keeps the second full); outputs and FLOPs as the
    reference's."""
    model = cad(32)
    x = torch.randn(1, 3, 70, 90)
    full = keep_all(model, x, True)
    calls = []
    original = model._stage_sparse
    monkeypatch.setattr(model, '_stage_sparse',
                        lambda *args, **kwargs: calls.append(args[1]) or original(*args, **kwargs))
    partial = torch.rand(1, *full[0].shape[1:]) < 0.5
    for masks, cell_stages in ((full, []), ([full[0], ~full[1]], []),
                               ([partial, full[1]], ['layer3', 'layer4'])):
        calls.clear()
        sparse, sparse_record = run(model, x, 'sparse', masks)
        assert calls == cell_stages
        dense, dense_record = run(model, x, 'dense', masks)
        for a, b in zip(sparse, dense):
            assert relative_error(a, b) < 1e-4
        assert torch.equal(sparse_record.executed_flops, dense_record.executed_flops)
