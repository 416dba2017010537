"""SFSI-ResNet: sparse == masked for the same sampled masks, the all-on network ==
mmdet's ResNet, dense checkpoints, records and FLOPs against an operator-level count,
seeded stochastic inference, loss, gradients, build-time errors."""
import pytest
import torch
from mmdet.models.backbones import ResNet, ResNeXt
from mmseg.models.backbones import ResNetV1c
from mac_counter import MacCounter

from mmdyn.models.backbones import SFSIResNet
from mmdyn.models.losses import SFSISparseLoss
from mmdyn.ops import native


pytestmark = pytest.mark.usefixtures('one_thread')

SMALL = dict(depth=50, base_channels=8, stem_channels=8, init_cfg=None)
MMSEG_V1C = dict(deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                 contract_dilation=True)
DCN = dict(dcn=dict(type='DCNv2', deform_groups=1), stage_with_dcn=(False, True, True, True))


def randomize_(model, seed=0):
    """Non-trivial BN statistics, mask heads that sample about half of the pixels,
    kernel widths != 1 and (DCN) non-zero fractional offsets."""
    generator = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
        if name.endswith('_mask'):
            module.weight.data.normal_(0, 0.05, generator=generator)
            module.bias.data.fill_(0.0)
        if name.endswith('conv_offset'):
            module.weight.data.normal_(0, 0.02, generator=generator)
            module.bias.data.normal_(0, 0.5, generator=generator)
    for name, param in model.named_parameters():
        if name.endswith('_sigma'):
            param.data.fill_(0.6 + 0.1 * torch.rand(1, generator=generator).item())
    return model


def build(**kwargs):
    torch.manual_seed(0)
    return randomize_(SFSIResNet(**{**SMALL, **kwargs})).eval()


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def run(model, x, mode, seed=5):
    model.set_execution_mode(mode)
    model.set_sampling_seed(seed)
    with torch.no_grad():
        out = model(x)
    return out, model.records


CASES = {
    'stochastic': dict(),
    'no-grid-prior': dict(grid_prior_interval=None),
    'grid-prior-3': dict(grid_prior_interval=3, interpolation_kernel=5),
    'deterministic': dict(sampling='deterministic'),
    'relu': dict(sampling='relu', grid_prior_interval=None),
    'resnext': dict(groups=4, base_width=4),
    'v1c-dilated': MMSEG_V1C,
    'avg-down': dict(avg_down=True),
    'sampled-conv3': dict(sparse_conv3='sampled', avg_down=True),
    'dcn': DCN,
    'dcn-no-grid-prior': dict(grid_prior_interval=None, **DCN),
}


@pytest.mark.parametrize('case', CASES.values(), ids=CASES.keys())
def test_sparse_equals_masked_for_the_same_sampled_masks(case):
    model = build(**case)
    x = torch.randn(2, 3, 67, 83)  # odd sizes everywhere
    masked, masked_record = run(model, x, 'masked')
    sparse, sparse_record = run(model, x, 'sparse')
    for a, b in zip(sparse, masked):
        assert a.shape == b.shape
        assert relative_error(a, b) < 1e-4
    rates = []
    for m_block, s_block in zip(masked_record.blocks, sparse_record.blocks):
        assert torch.equal(m_block.mask, s_block.mask)
        assert torch.equal(m_block.conv1_mask, s_block.conv1_mask)
        torch.testing.assert_close(m_block.executed_flops, s_block.executed_flops)
        rates.append(s_block.activation_rate.mean().item())
    assert 0.1 < sum(rates) / len(rates) < 0.95  # genuinely partial masks


@pytest.mark.parametrize('rate', [0.0, 1.0])
@pytest.mark.parametrize('case', [dict(grid_prior_interval=None),
                                  dict(grid_prior_interval=None, **DCN), dict()],
                         ids=['plain', 'dcn', 'grid-prior'])
def test_empty_and_full_masks(rate, case):
    model = build(**case)
    model.set_forced_activation(rate, seed=2)
    x = torch.randn(1, 3, 45, 61)
    masked, masked_record = run(model, x, 'masked')
    sparse, _ = run(model, x, 'sparse')
    for a, b in zip(sparse, masked):
        assert relative_error(a, b) < 1e-4
    # every pixel sampled: the blocks ran as dense bottlenecks (their dense route)
    routes = [m.ran_densely for m in model.modules() if hasattr(m, 'ran_densely')]
    assert routes and all(r == (rate == 1.0) for r in routes)
    for block in masked_record.blocks:
        if 'grid_prior_interval' in case or rate == 1.0:
            expected = torch.full((1,), rate)
            torch.testing.assert_close(block.activation_rate, expected)
            torch.testing.assert_close(block.conv1_rate, expected)
        else:
            assert 0 < block.activation_rate.item() <= 0.25  # only the grid prior


@pytest.mark.parametrize('dense_cls,kwargs', [
    (ResNet, dict()), (ResNeXt, dict(groups=4, base_width=4)), (ResNetV1c, MMSEG_V1C)],
    ids=['resnet', 'resnext', 'resnetv1c'])
def test_all_on_equals_the_dense_network_and_its_checkpoint_loads(dense_cls, kwargs):
    torch.manual_seed(1)
    dense = dense_cls(**SMALL, **{k: v for k, v in kwargs.items() if k != 'deep_stem'})
    dense.init_weights()
    randomize_(dense, seed=3).eval()
    model = SFSIResNet(**SMALL, **kwargs).eval()
    result = model.load_state_dict(dense.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(
        k.endswith(('conv1_mask.weight', 'conv1_mask.bias', 'conv2_mask.weight',
                    'conv2_mask.bias', 'conv1_sigma', 'conv2_sigma'))
        for k in result.missing_keys)
    assert len(result.missing_keys) == 6 * 16
    model.set_forced_activation(1.0)
    x = torch.randn(1, 3, 53, 70)
    with torch.no_grad():
        reference = dense(x)
    for mode in ('masked', 'sparse'):
        out, _ = run(model, x, mode)
        for a, b in zip(out, reference):
            assert relative_error(a, b) < 1e-4


@pytest.mark.parametrize('conv3', ['sampled', 'dense'])
@pytest.mark.parametrize('case', [dict(), dict(groups=4, base_width=4, **MMSEG_V1C)],
                         ids=['resnet', 'resnext-v1c'])
def test_executed_flops_match_an_operator_level_count(case, conv3, monkeypatch):
    # the PyTorch route: the native kernels' products run in C++ (tested equal to it)
    monkeypatch.setenv(native.ENV_SWITCH, '0')
    model = build(sparse_conv3=conv3, **case)
    model.set_execution_mode('sparse')
    x = torch.randn(2, 3, 61, 77)
    with torch.no_grad():
        model(x)  # kernel choices are measured on first use: not inside the count
    model.set_sampling_seed(0)
    with torch.no_grad(), MacCounter() as counter:
        model(x)
    record = model.records
    # The one-channel normalisers G * M run as shifted multiply-adds (no GEMM / conv for
    # the counter to see): 2k MACs per pixel of each interpolated map, added by hand.
    normalisers = 0
    for block in record.blocks:
        for mask in (block.conv1_mask, block.mask):
            normalisers += 2 * 7 * mask.numel()
    assert float(record.executed_flops.sum()) == pytest.approx(counter.macs + normalisers,
                                                               rel=1e-9)
    # and the dense FLOPs are those of the dense network
    twin = {k: v for k, v in case.items() if k != 'contract_dilation'}
    dense = ResNet(**SMALL) if not case else ResNeXt(**SMALL, **twin)
    with torch.no_grad(), MacCounter() as counter:
        dense.eval()
        dense(x[:1])
    assert record.dense_flops == pytest.approx(counter.macs, rel=1e-9)


def test_stochastic_inference_is_reproducible_under_a_seed():
    model = build()
    x = torch.randn(1, 3, 64, 64)
    first, rec1 = run(model, x, 'sparse', seed=11)
    masks1 = [b.mask.clone() for b in rec1.blocks]
    second, rec2 = run(model, x, 'sparse', seed=11)
    assert all(torch.equal(a, b.mask) for a, b in zip(masks1, rec2.blocks))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    _, rec3 = run(model, x, 'sparse', seed=12)
    assert not all(torch.equal(a, b.mask) for a, b in zip(masks1, rec3.blocks))
    # a deterministic network gives the same masks whatever the seed
    model.set_sampling('deterministic')
    _, rec4 = run(model, x, 'sparse', seed=1)
    _, rec5 = run(model, x, 'sparse', seed=2)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(rec4.blocks, rec5.blocks))


def test_training_loss_and_gradients():
    model = build()
    model.train()
    model.set_temperature(0.5)
    x = torch.randn(2, 3, 40, 48)
    outs = model(x)
    loss = SFSISparseLoss(loss_weight=0.2)(model.records)
    blocks = model.records.blocks
    expected = 0.2 * sum(0.25 * b.soft_masks[0].mean() + 0.75 * b.soft_masks[1].mean()
                         for b in blocks) / len(blocks)
    torch.testing.assert_close(loss['loss_sparsity'], expected)
    assert not any('loss' in k for k in loss if k != 'loss_sparsity')
    (loss['loss_sparsity'] + sum(o.mean() for o in outs)).backward()
    block = model.layer2[1]
    assert block.conv1_mask.weight.grad.abs().sum() > 0
    assert block.conv2_mask.bias.grad.abs().sum() > 0
    assert block.conv1_sigma.grad is not None and block.conv1_sigma.grad != 0
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_initial_masks_are_almost_full_and_frozen_stages_keep_heads_trainable():
    torch.manual_seed(0)
    model = SFSIResNet(**SMALL, frozen_stages=1)
    model.init_weights()
    assert model.layer1[0].conv1_mask.bias.item() == 3.0
    assert model.layer1[0].conv1_mask.weight.abs().sum() == 0
    model.train()
    assert model.layer1[0].conv1_mask.weight.requires_grad
    assert not model.layer1[0].conv1.weight.requires_grad
    model.eval()
    model(torch.randn(1, 3, 64, 64))
    rates = torch.stack([b.activation_rate for b in model.records.blocks])
    assert rates.mean() > 0.9


@pytest.mark.parametrize('kwargs,match', [
    (dict(grid_prior_interval=0), 'grid_prior_interval'),
    (dict(interpolation_kernel=6), 'interpolation_kernel'),
    (dict(interpolation_kernel=-1), 'interpolation_kernel'),
    (dict(sampling='gumbel'), "'stochastic', 'deterministic', 'relu'"),
    (dict(depth=18), 'depth'),
    (dict(dcn=dict(type='DCN'), stage_with_dcn=(False, True, True, True)), 'DCNv2'),
    (dict(style='caffe'), 'pytorch'),
    (dict(sparse_conv3='fused'), 'sparse_conv3'),
])
def test_bad_settings_fail_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFSIResNet(**{**SMALL, **kwargs})


def test_negative_loss_weight_is_rejected():
    with pytest.raises(ValueError, match='loss_weight'):
        SFSISparseLoss(loss_weight=-0.1)


def test_resnext101_32x4d_checkpoint_names_and_shapes():
    """SFSI-ResNeXt-101 32x4d through groups / base_width: the names and shapes of an
    mmdet ResNeXt state dict, plus 6 new parameters per block (built on the meta
    device: no memory, no init)."""
    with torch.device('meta'):
        dense = ResNeXt(depth=101, groups=32, base_width=4, init_cfg=None).state_dict()
        model = SFSIResNet(depth=101, groups=32, base_width=4, init_cfg=None)
    ours = model.state_dict()
    assert all(ours[k].shape == v.shape for k, v in dense.items())
    assert len(set(ours) - set(dense)) == 6 * 33
    assert model.layer3[5].conv2.groups == 32 and model.layer3[5].conv2.in_channels == 512
