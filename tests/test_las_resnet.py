"""LAS-ResNet: sparse path == dense masked reference, records, checkpoints, errors."""
import pytest
import torch
from mmdet.models.backbones import ResNet
from mmengine.analysis import FlopAnalyzer
from mmseg.models.backbones import ResNetV1c

from backbone_table import randomize_batchnorm_
from mmdyn.latency.accuracy import route_policy
from mmdyn.models.backbones import LASResNet
from mmdyn.ops.window_conv import WINDOW_GROUPS
from test_native_kernels import spy_on_candidates

MMSEG_V1C = dict(deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                 contract_dilation=True)


def build(depth=50, **kwargs):
    torch.manual_seed(0)
    model = LASResNet(depth=depth, init_cfg=None, **kwargs)
    return randomize_batchnorm_(model).eval()


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def run_both(model, x):
    model.set_execution_mode('masked')
    with torch.no_grad():
        masked = model(x)
    masked_record = model.records
    model.set_execution_mode('sparse')
    with torch.no_grad():
        sparse = model(x)
    return masked, sparse, masked_record, model.records


CASES = [
    dict(depth=18, granularity=(4, 4, 2, 1)),
    dict(depth=34, granularity=(3, 2, 2, 1)),
    dict(depth=50, granularity=(8, 4, 7, 1)),
    dict(depth=50, granularity=((8, 4, 2), 4, (7, 7, 3, 3, 1, 1), 1)),
    dict(depth=50, granularity=(4, 4, 4, 4), **MMSEG_V1C),
    dict(depth=18, granularity=(2, 2, 2, 2), **MMSEG_V1C),
    dict(depth=50, granularity=(2, 3, 2, 1), avg_down=True),
    dict(depth=18, granularity=(4, 4, 2, 1), basic_conv1='sparse'),
    dict(depth=34, granularity=(3, 2, 2, 1), basic_conv1='sparse'),
    dict(depth=18, granularity=(2, 2, 2, 2), basic_conv1='sparse', **MMSEG_V1C),
]


@pytest.mark.parametrize('case', CASES, ids=lambda c: f"r{c['depth']}-{c['granularity']}"
                         + ('-v1c' if 'deep_stem' in c else '')
                         + ('-avgdown' if 'avg_down' in c else '')
                         + ('-sparseconv1' if c.get('basic_conv1') == 'sparse' else ''))
@pytest.mark.parametrize('rate', [0.0, 0.35, 1.0])
def test_sparse_equals_masked_for_the_same_mask(case, rate):
    model = build(**case)
    model.set_forced_activation(rate, seed=1)
    x = torch.randn(2, 3, 75, 101)  # odd sizes: every stage needs padding somewhere
    masked, sparse, masked_record, sparse_record = run_both(model, x)
    for a, b in zip(sparse, masked):
        assert a.shape == b.shape
        assert relative_error(a, b) < 1e-4
    for m_block, s_block in zip(masked_record.blocks, sparse_record.blocks):
        assert torch.equal(m_block.mask, s_block.mask)
        torch.testing.assert_close(m_block.executed_flops, s_block.executed_flops)
        expected_rate = torch.full((2,), float(rate)) if rate in (0.0, 1.0) else None
        if expected_rate is not None:
            torch.testing.assert_close(s_block.activation_rate, expected_rate)


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('gate', ['fused', 'pooled'])
def test_learned_masks_fused_gate_agrees_with_masker(depth, gate, monkeypatch):
    """Sparse mode decides with the masker fused into conv1 (App. B.1) or on the pooled
    input (the two kernels of mmdyn.ops.gate, each pinned; basic blocks use the masker)."""
    monkeypatch.setenv('MMDYN_KERNELS', f'conv1_gate={gate}')
    model = build(depth, granularity=(4, 2, 2, 1))
    for block in model.dynamic_blocks():
        torch.nn.init.normal_(block.masker.weight, std=0.5)  # mixed decisions
        block.masker.bias.data.zero_()
    x = torch.randn(1, 3, 64, 96)
    masked, sparse, masked_record, sparse_record = run_both(model, x)
    rates = [float(b.activation_rate) for b in masked_record.blocks]
    assert 0.05 < sum(rates) / len(rates) < 0.95
    for m_block, s_block in zip(masked_record.blocks, sparse_record.blocks):
        assert torch.equal(m_block.mask, s_block.mask)
    for a, b in zip(sparse, masked):
        assert relative_error(a, b) < 1e-4


@pytest.mark.parametrize('case,gate', [(CASES[0], 'pooled'), (CASES[2], 'fused'),
                                       (CASES[2], 'pooled'), (CASES[7], 'pooled')],
                         ids=['r18', 'r50-8-4-7-1-fused-gate', 'r50-8-4-7-1',
                              'r18-sparseconv1'])
@pytest.mark.parametrize('way', sorted(WINDOW_GROUPS.candidates))
def test_every_window_way_of_conv2_equals_the_masked_reference(case, gate, way,
                                                               monkeypatch):
    """conv2 on the active patches by each way of ``window_groups`` pinned (from the
    map: conv1's map read in place, a channel slice of it where the gate is fused into
    conv1), the sparse executor only (no dense route), on odd sizes with border patches:
    equal to the masked reference; the way pinned is the way that ran."""
    monkeypatch.setenv('MMDYN_KERNELS', f'window_groups={way},conv1_gate={gate}')
    ran = spy_on_candidates(monkeypatch, WINDOW_GROUPS)
    model = build(**case)
    model.set_forced_activation(0.35, seed=2)
    x = torch.randn(2, 3, 75, 101)
    with route_policy('never'):
        masked, sparse, _, _ = run_both(model, x)
    for a, b in zip(sparse, masked):
        assert relative_error(a, b) < 1e-4
    assert ran and set(ran) == {way}


@pytest.mark.parametrize('size', [(1, 1), (17, 9), (32, 32)])
def test_any_input_size(size):
    model = build(18, granularity=(4, 4, 2, 1))
    model.set_forced_activation(0.5)
    masked, sparse, _, _ = run_both(model, torch.randn(1, 3, *size))
    for a, b in zip(sparse, masked):
        assert relative_error(a, b) < 1e-4


@pytest.mark.parametrize('kwargs,reference', [
    (dict(depth=50), lambda: ResNet(depth=50)),
    (dict(depth=18, out_indices=(1, 3)), lambda: ResNet(depth=18, out_indices=(1, 3))),
    (dict(depth=50, **MMSEG_V1C),
     lambda: ResNetV1c(depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                       contract_dilation=True)),
])
def test_outputs_and_parameter_names_match_the_dense_resnet(kwargs, reference):
    model = build(**kwargs)
    dense = reference()
    dense.eval()  # mmdet's ResNet.train() returns None
    dense_keys = set(dense.state_dict())
    las_keys = set(model.state_dict())
    assert dense_keys <= las_keys
    assert all('.masker.' in key for key in las_keys - dense_keys)
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if k in dense_keys})
    x = torch.randn(1, 3, 65, 81)
    model.set_forced_activation(1.0)  # full masks: the dynamic net is the static one
    with torch.no_grad():
        expected = dense(x)
    for mode in ('masked', 'sparse'):
        model.set_execution_mode(mode)
        with torch.no_grad():
            outputs = model(x)
        assert len(outputs) == len(expected)
        for a, b in zip(outputs, expected):
            assert a.shape == b.shape and relative_error(a, b) < 1e-4


def test_resnet_checkpoint_loads_with_only_maskers_missing(tmp_path):
    torch.manual_seed(0)
    source = ResNet(depth=50).state_dict()  # torchvision's ResNet key names
    source['fc.weight'], source['fc.bias'] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / 'resnet50.pth'
    torch.save(source, path)
    model = LASResNet(depth=50, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    loaded = model.state_dict()
    for key, value in source.items():
        if not key.startswith('fc.'):
            assert torch.equal(loaded[key], value), key
    model.eval()
    assert all(float(b.masker.bias[0] - b.masker.bias[1]) > 0 for b in model.dynamic_blocks())


def records_at_rate(model, x, rate):
    model.set_forced_activation(rate)
    with torch.no_grad():
        model(x)
    return model.records


def test_dense_flops_equal_mmengine_conv_count():
    model = build(50, granularity=(4, 4, 2, 1))
    x = torch.randn(1, 3, 96, 128)
    record = records_at_rate(model, x, 1.0)
    ours = record.dense_flops
    counted = FlopAnalyzer(model.static_twin(), (x,)).by_operator()['conv']
    assert ours == counted


def test_executed_flops_full_and_empty_masks():
    model = build(50, granularity=(4, 4, 2, 1))
    x = torch.randn(2, 3, 64, 64)
    for block in records_at_rate(model, x, 1.0).blocks:
        assert (block.executed_flops > block.dense_flops).all()  # + the gate channel
    for block in records_at_rate(model, x, 0.0).blocks:
        assert (block.executed_flops < 0.6 * block.dense_flops).all()
        assert block.activation_rate.eq(0).all()
    # layer1.1 by hand: 16 x 16 map, 256 -> 64 -> 64 -> 256 channels.
    block = model.records.blocks[1]
    pixels = 16 * 16
    conv1, conv2, conv3, gate = 256 * 64, 64 * 64 * 9, 64 * 256, 256
    assert block.name == 'layer1.1'
    assert block.dense_flops == pixels * (conv1 + conv2 + conv3)
    assert block.executed_flops.tolist() == [pixels * (conv1 + gate)] * 2
    summary = model.sparsity_summary()
    assert summary.executed_flops.shape == (2,)
    assert (summary.executed_flops < summary.dense_flops).all()


def hand_counted_conv1_region(mask, patch, height, width, halo):
    """Pixels within ``halo`` of an active patch, counted patch by patch in Python."""
    pixels = set()
    for r, c in (mask > 0.5).nonzero().tolist():
        for y in range(max(r * patch - halo, 0), min((r + 1) * patch + halo, height)):
            for x in range(max(c * patch - halo, 0), min((c + 1) * patch + halo, width)):
                pixels.add((y, x))
    return len(pixels)


@pytest.mark.parametrize('mode', ['masked', 'sparse'])
@pytest.mark.parametrize('rate', [0.0, 0.3, 1.0])
def test_sparse_conv1_flops_count_the_dilated_mask(rate, mode):
    """basic_conv1='sparse': conv1's executed MACs are those of the conv1 output pixels
    within conv2's halo of an active patch, counted by hand; for an all-off mask the
    block costs only its gate and shortcut."""
    model = build(18, granularity=(3, 2, 2, 1), basic_conv1='sparse')
    model.set_execution_mode(mode)
    modules = dict(model.named_modules())
    inputs = {}
    for name in ('layer1.0', 'layer2.0', 'layer2.1', 'layer3.1', 'layer4.0'):
        modules[name].register_forward_pre_hook(
            lambda m, args, name=name: inputs.__setitem__(name, args[0].shape[2:]))
    x = torch.randn(2, 3, 70, 90)
    record = records_at_rate(model, x, rate)
    for block in record.blocks:
        if block.name not in inputs:
            continue
        module, grid = modules[block.name], block.grid
        c_in, c_out = module.conv1.in_channels, module.conv1.out_channels
        in_h, in_w = inputs[block.name]
        gate = in_h * in_w * c_in + grid.rows * grid.cols * 2 * c_in
        shortcut = 0 if module.downsample is None else grid.height * grid.width * c_in * c_out
        for sample in range(2):
            mask = block.mask[sample, 0]
            region = hand_counted_conv1_region(mask, grid.patch, grid.height, grid.width,
                                               module.conv2.dilation[0])
            computed = hand_counted_conv1_region(mask, grid.patch, grid.height, grid.width, 0)
            expected = gate + region * c_in * c_out * 9 + computed * c_out * c_out * 9 + shortcut
            assert float(block.executed_flops[sample]) == expected
            if rate == 0.0:
                assert region == computed == 0
            if rate == 1.0:
                assert region == grid.height * grid.width


def test_gradients_reach_the_maskers_in_training():
    model = LASResNet(depth=18, granularity=(4, 4, 2, 1), init_cfg=None).train()
    model.set_temperature(1.0)
    outputs = model(torch.randn(2, 3, 64, 64))
    task = sum(o.mean() for o in outputs)
    task.backward()
    grads = [b.masker.weight.grad for b in model.dynamic_blocks()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_accumulated_records_sum_over_forwards():
    model = build(18, granularity=(4, 4, 2, 1))
    model.set_forced_activation(0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    single = model.sparsity_summary()
    with model.accumulate_records(), torch.no_grad():
        model(x)
        model(x)
    double = model.sparsity_summary()
    assert double.dense_flops == 2 * single.dense_flops
    torch.testing.assert_close(double.executed_flops, 2 * single.executed_flops)


@pytest.mark.parametrize('kwargs,message', [
    (dict(depth=42), 'depth=42'),
    (dict(depth=50, granularity=(4, 4, 2)), 'one entry per stage'),
    (dict(depth=50, granularity=(4, 0, 2, 1)), r'granularity\[1\]=0'),
    (dict(depth=50, granularity=(4, 2.5, 2, 1)), r'granularity\[1\]=2.5'),
    (dict(depth=50, granularity='8471'), 'one entry per stage'),
    (dict(depth=50, granularity=(4, (2, 2), 2, 1)), r'granularity\[1\] lists 2 values'),
    (dict(depth=50, granularity=(4, 4, 2, 1), execution_mode='fast'), 'execution_mode'),
    (dict(depth=50, style='caffe'), "style='pytorch'"),
    (dict(depth=50, num_stages=5), 'num_stages'),
    (dict(depth=18, basic_conv1='halo'), "basic_conv1 must be 'dense' or 'sparse'"),
    (dict(depth=50, basic_conv1='sparse'), 'applies to BasicBlock depths'),
])
def test_bad_configuration_fails_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LASResNet(init_cfg=None, **kwargs)


def test_bad_schedule_values_and_sparse_training():
    model = LASResNet(depth=18, init_cfg=None)
    with pytest.raises(ValueError, match='temperature'):
        model.set_temperature(0)
    with pytest.raises(ValueError, match='activation rate'):
        model.set_forced_activation(1.5)
    model.set_execution_mode('sparse')
    model.train()
    with pytest.raises(RuntimeError, match='inference-only'):
        model(torch.randn(1, 3, 32, 32))


def test_train_and_eval_return_the_module():
    model = LASResNet(depth=18, init_cfg=None)
    assert model.eval() is model and model.train() is model


def test_frozen_stages_keep_maskers_trainable():
    model = LASResNet(depth=18, frozen_stages=1, init_cfg=None).train()
    block = model.layer1[0]
    assert not block.conv1.weight.requires_grad and not block.bn1.training
    assert block.training and block.masker.weight.requires_grad
    model(torch.randn(1, 3, 32, 32))[0].sum().backward()
    assert block.masker.weight.grad.abs().sum() > 0
    assert block.conv1.weight.grad is None


def test_folded_weight_cache_follows_weight_updates():
    """The sparse path caches folded weights; in-place updates (optimizer steps,
    load_state_dict, BN statistics) must invalidate the cache."""
    model = build(50, granularity=(4, 4, 2, 1))
    x = torch.randn(1, 3, 64, 64)
    model.set_execution_mode('sparse')
    with torch.no_grad():
        before = model(x)[-1].clone()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.mul_(2.0)
        model.layer4[0].conv2.weight.mul_(-1.0)
        model.layer2[1].masker.bias[0] -= 10.0  # layer2.1 now skips everything
    masked, sparse, masked_record, sparse_record = run_both(model, x)
    assert relative_error(sparse[-1], before) > 1e-2
    assert relative_error(sparse[-1], masked[-1]) < 1e-4
    assert float(sparse_record.blocks[4].activation_rate) == 0.0
