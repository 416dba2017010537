"""SAR-ResNet: sparse == masked, plain outputs, records, losses, clear errors."""
import functools

import pytest
import torch
from mmcv.cnn import fuse_conv_bn
from mmdet.models.backbones import ResNet

from mmdyn.latency.accuracy import route_policy
from mmdyn.models.backbones import SARResNet, parse_sar_setting
from mmdyn.models.losses import RefineRateLoss
from mmdyn.ops import BlockRecord, ForwardRecord
from mmdyn.ops.window_conv import WINDOW_GROUPS
from test_native_kernels import spy_on_candidates


def build(depth=18, **kwargs):
    kwargs.setdefault('min_input_size', 32)
    kwargs.setdefault('mask_size', (4, 4, 2))
    model = SARResNet(depth, init_cfg=None, **kwargs)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():  # non-trivial statistics, so BN folding matters
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def run_both(model, x):
    outputs = {}
    for mode in ('masked', 'sparse'):
        model.set_execution_mode(mode)
        with torch.no_grad():
            outputs[mode] = model(x)
        outputs[mode + '_record'] = model.records
    return outputs


def assert_same(outputs):
    for dense, sparse in zip(outputs['masked'], outputs['sparse']):
        assert dense.shape == sparse.shape
        error = float((dense - sparse).abs().max() / dense.abs().max().clamp(min=1e-12))
        assert error < 1e-4, error


@functools.lru_cache(maxsize=None)
def shared_model(depth, groups):
    """Built once per (depth, G); tests set mode and forced rate before every use."""
    return build(depth, groups=groups)


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('groups', [1, 2, 4])
@pytest.mark.parametrize('size', [(75, 101), (33, 47)])
def test_sparse_equals_masked_with_forced_masks(depth, groups, size):
    model = shared_model(depth, groups)
    x = torch.randn(2, 3, *size)
    for rate in (0.0, 0.4, 1.0):
        model.set_forced_activation(rate, seed=3)
        outputs = run_both(model, x)
        assert_same(outputs)
        for record in outputs['sparse_record'].blocks:
            assert record.mask.shape[:2] == (2, groups)
            if rate in (0.0, 1.0):
                assert torch.allclose(record.activation_rate, torch.full((2,), rate))


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('way', sorted(WINDOW_GROUPS.candidates))
def test_every_window_way_of_the_refinement_equals_masked(depth, way, monkeypatch):
    """The refinement's 3x3 conv on its canvas by each way of ``window_groups``
    pinned (from the map: tap rows straight into the canvas), the sparse executor only,
    on an odd size whose cells leave border groups: equal to the masked reference; the
    way pinned is the way that ran."""
    monkeypatch.setenv('MMDYN_KERNELS', f'window_groups={way}')
    ran = spy_on_candidates(monkeypatch, WINDOW_GROUPS)
    model = shared_model(depth, 2)
    model.set_forced_activation(0.4, seed=5)
    with route_policy('never'):
        assert_same(run_both(model, torch.randn(2, 3, 75, 101)))
    assert ran and set(ran) == {way}


@pytest.mark.parametrize('setting', ['G2s1a1', 'G2s4a2b2', 'G4s8a4b1'])
def test_sparse_equals_masked_for_other_settings(setting):
    """Base scale 1 / 4 / 8, width alpha, and a wider refinement branch (beta=2, a
    projection on the first refinement block's shortcut and on the branch output)."""
    model = build(50, sar_setting=setting)
    model.set_forced_activation(0.5, seed=1)
    assert_same(run_both(model, torch.randn(1, 3, 70, 90)))


def test_sparse_equals_masked_with_learned_masks():
    model = build(50)
    for module in model.modules():  # selector logits around zero: mixed decisions
        if type(module).__name__ == 'PatchMasker':
            torch.nn.init.normal_(module.weight, std=1.0)
            module.bias.data.zero_()
    outputs = run_both(model, torch.randn(2, 3, 96, 80))
    assert_same(outputs)
    rates = torch.stack([b.activation_rate for b in outputs['sparse_record'].blocks])
    assert 0.05 < float(rates.mean()) < 0.95  # the test exercised partial masks
    for masked, sparse in zip(outputs['masked_record'].blocks, outputs['sparse_record'].blocks):
        assert torch.equal(masked.mask, sparse.mask)


def test_mmseg_dilated_layout_and_folded_batchnorm():
    """ResNetV1c layout (deep stem, strides 1-2-1-1, dilations 1-1-2-4, contracted
    dilation): halos grow with the dilation. Also after mmcv's fuse_conv_bn, which
    the benchmark applies."""
    model = build(50, deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                  contract_dilation=True, sar_setting='G2s4a1')
    model.set_forced_activation(0.5, seed=2)
    x = torch.randn(1, 3, 67, 83)
    reference = run_both(model, x)
    assert_same(reference)
    assert [o.shape[2] for o in reference['masked']] == [17, 9, 9, 9]
    fused = fuse_conv_bn(model)
    outputs = run_both(fused, x)
    assert_same(outputs)
    for a, b in zip(reference['masked'], outputs['sparse']):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


@pytest.mark.parametrize('depth', [18, 50])
def test_outputs_match_the_resnet_contract(depth):
    model = build(depth, out_indices=(0, 1, 2, 3))
    dense = ResNet(depth, init_cfg=None)
    dense.eval()  # mmdet's ResNet.eval() returns None
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = model(x), dense(x)
    assert [o.shape for o in ours] == [o.shape for o in theirs]
    assert all(o.is_contiguous() for o in ours)


@pytest.mark.parametrize('size', [(1, 1), (17, 9), (5, 200)])
def test_any_input_size_runs(size):
    model = build(18, mask_size=(7, 7, 2), min_input_size=224)  # smaller inputs still run
    model.set_forced_activation(0.5)
    outputs = run_both(model, torch.randn(1, 3, *size))
    assert_same(outputs)


def test_records_count_flops_from_the_masks():
    model = build(50, groups=2)
    x = torch.randn(2, 3, 64, 64)
    model.set_forced_activation(0.0)
    with torch.no_grad():
        model(x)
    empty = model.records
    model.set_forced_activation(1.0)
    with torch.no_grad():
        model(x)
    full = model.records
    assert torch.allclose(full.executed_flops, torch.full((2,), full.dense_flops))
    assert empty.static_flops == full.static_flops
    # With empty masks only the selectors (and shortcut projections) remain.
    for block in empty.blocks:
        per_pixel = block.dense_flops - float(block.executed_flops[0])
        assert per_pixel > 0
    assert set(full.static_flops) == {'stem', 'layer1', 'layer2', 'layer3', 'layer4'}
    names = [b.name for b in full.blocks]
    assert names[0] == 'layer1.refine.0' and len(names) == 2 + 3 + 5


def test_gradients_reach_every_selector_and_sparse_training_is_refused():
    model = build(18).train()
    model.set_temperature(0.5)
    outputs = model(torch.randn(2, 3, 64, 64))
    loss = RefineRateLoss(target=0.3)(model.records)['loss_sparsity'] \
        + sum(o.mean() for o in outputs)
    loss.backward()
    selectors = [b.selector for b in model.dynamic_blocks()]
    assert len(selectors) == 3
    for selector in selectors:
        assert selector.masker.weight.grad is not None
        assert float(selector.masker.weight.grad.abs().sum()) > 0
        assert selector.conv.weight.grad is not None
    model.set_execution_mode('sparse')
    with pytest.raises(RuntimeError, match='inference-only'):
        model(torch.randn(1, 3, 32, 32))


def test_frozen_stages_keep_selectors_trainable():
    model = build(18, frozen_stages=1).train()
    stage = model.layer1
    assert not any(p.requires_grad for p in stage.refine[0].conv1.parameters())
    assert all(p.requires_grad for p in stage.refine[0].selector.parameters())
    assert stage.refine[0].training and stage.refine[0].selector.training


def fake_record(rates):
    """Two blocks, a batch of two, with the given activation rates."""
    blocks = [BlockRecord(f'b{k}', None, torch.tensor(r), 1.0, torch.tensor(r))
              for k, r in enumerate(rates)]
    return ForwardRecord({'stem': 0.0}, blocks)


def test_refine_rate_losses_eq10_and_eq11():
    record = fake_record([[0.2, 0.8], [0.5, 0.5]])
    batch = RefineRateLoss(target=0.5, mode='batch')(record)['loss_sparsity']
    sample = RefineRateLoss(target=0.5, mode='sample')(record)['loss_sparsity']
    assert float(batch) == pytest.approx(0.0)                       # block means hit t
    assert float(sample) == pytest.approx(10 * (0.09 + 0.09) / 4)    # per-sample misses, lambda 10
    loss = RefineRateLoss(target=0.5, loss_weight=2.0, mode='batch')
    loss.set_target(0.3)
    out = loss(record)
    assert float(out['loss_sparsity']) == pytest.approx(2.0 * 0.04)
    assert 'loss' not in ''.join(k for k in out if k != 'loss_sparsity')
    with pytest.raises(ValueError, match='Eq. 10'):
        RefineRateLoss(mode='image')


def test_setting_shorthand():
    assert parse_sar_setting('G2s2a2b1') == dict(groups=2, base_scale=2, alpha=2, beta=1.0)
    assert parse_sar_setting('G2s4a1') == dict(groups=2, base_scale=4, alpha=1, beta=1.0)
    model = build(18, sar_setting='G4s4a2b1')
    assert model.sar_groups == [4, 4, 4] and model.base_scale == [4, 4, 4]


@pytest.mark.parametrize('kwargs, message', [
    (dict(groups=3), 'G=3 does not divide'),
    (dict(groups=(2, 2, 48)), 'G=48 does not divide'),
    (dict(mask_size=(7, 7, 7), min_input_size=64), 'mask_size K=7 at stage 3 .* 4x4'),
    (dict(base_scale=0), 'base_scale=0'),
    (dict(base_scale=1.5), 'positive integers'),
    (dict(base_scale=3), 'powers of two'),
    (dict(alpha=-1), 'alpha=-1'),
    (dict(alpha=3), 'alpha=3 does not divide'),
    (dict(beta=0.3), 'fractional'),
    (dict(sar_setting='G2x2'), 'not of the form'),
    (dict(sar_setting='G2s2a2', groups=2), 'either sar_setting'),
    (dict(mask_size=(4, 4)), 'one per SAR stage'),
    (dict(execution_mode='fast'), 'execution_mode'),
])
def test_bad_configuration_is_refused_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(18, **kwargs)


def test_unsupported_depth_and_options():
    with pytest.raises(ValueError, match='depth=152'):
        SARResNet(152)
    with pytest.raises(ValueError, match='with_cp'):
        SARResNet(18, with_cp=True)


def test_mask_overlays_per_group(tmp_path):
    """One overlay per refinement block and channel group (SAR Fig. 6/7); the tinted
    area of each is the group's mask."""
    import cv2
    import numpy as np

    from mmdyn.visualization import block_mask_on_input, save_block_overlays
    model = build(18, groups=2)
    model.set_forced_activation(0.5, seed=4)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    image = np.full((64, 96, 3), 128, np.uint8)
    paths = save_block_overlays(image, model.records, 0, (64, 96), str(tmp_path))
    names = sorted(p.split('/')[-1] for p in paths)
    assert names[:2] == ['all_blocks.png', 'layer1.refine.0.g0.png']
    assert len(names) == 3 * 2 + 1
    for record in model.records.blocks:
        for group in range(2):
            selected = block_mask_on_input(record, 0, (64, 96), (64, 96), group)
            expected = (record.mask[0, group] > 0).float().mean()
            assert selected.mean() == pytest.approx(float(expected), abs=0.1)
            tile = cv2.imread(str(tmp_path / f'{record.name}.g{group}.png'))
            assert tile.shape[1:] == (96, 3) and tile.shape[0] > 64  # the overlay, then its legend


@pytest.mark.parametrize('refine_size, base_size', [((12, 16), (6, 8)), ((13, 15), (7, 8))])
def test_fusion_inference_path_equals_the_formula(refine_size, base_size):
    """Eq. 5 at inference (in place, broadcast upsampling) == the training formula."""
    from mmdyn.models.backbones.sar_resnet import AdaptiveFusion
    fusion = AdaptiveFusion(32)
    base, refine = torch.randn(2, 32, *base_size), torch.randn(2, 32, *refine_size)
    expected = fusion(base, refine)  # grad enabled: the plain formula
    with torch.no_grad():
        got = fusion(base, refine.clone().contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize('depth, groups', [(18, 2), (50, 2), (50, 1)])
@pytest.mark.parametrize('policy', ['always', 'measured'])
def test_dense_route_equals_masked_and_keeps_the_records(depth, groups, policy, monkeypatch):
    """The refine blocks' dense route (grouped convs on the whole map, masked) gives the
    masked reference's output and records the same FLOPs as the sparse route."""
    model = shared_model(depth, groups)
    x = torch.randn(1, 3, 75, 101)
    for rate in (0.3, 1.0):
        model.set_forced_activation(rate, seed=5)
        monkeypatch.setenv('MMDYN_DENSE_FALLBACK', 'never')
        sparse = run_both(model, x)
        monkeypatch.setenv('MMDYN_DENSE_FALLBACK', policy)
        outputs = run_both(model, x)
        assert_same(outputs)
        refine = [m for m in model.modules() if hasattr(m, 'refine_dense')]
        if policy == 'always' or rate == 1.0:  # a full mask is the dense block itself
            assert all(block.ran_densely for block in refine)
        for a, b in zip(outputs['sparse_record'].blocks, sparse['sparse_record'].blocks):
            assert torch.equal(a.executed_flops, b.executed_flops)
    model.set_forced_activation(None)
