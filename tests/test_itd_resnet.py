"""ITD-ResNet against mmdet/mmseg networks built independently: dense checkpoints load
unchanged, the default permutation is the dense network, a stride option is the ResNet
built with that stride, a dilation option is mmdet's block built with that dilation;
MACs against mmengine's FLOP counter; per-sample permutations; nominal sizes; errors."""
import pytest
import torch
from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.models.backbones.resnet import Bottleneck
from mmengine.analysis import FlopAnalyzer
from mmseg.models.backbones import ResNetV1c

from mmdyn.models.backbones import ITDResNet, ITDResNeXt
from mmdyn.ops import ConvOption

SIZE = 40


def ev(module):
    """eval() (mmdet's ResNet.train returns None)."""
    module.eval()
    return module


def pair(depth=50, seed=0, itd_kwargs=None, **kwargs):
    """(mmdet ResNet, ITDResNet with the ResNet's state dict loaded strictly)."""
    torch.manual_seed(seed)
    dense = ev(ResNet(depth=depth, **kwargs))
    itd = ITDResNet(depth=depth, **kwargs, **(itd_kwargs or {})).eval()
    itd.load_state_dict(dense.state_dict(), strict=True)
    return dense, itd


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def assert_outputs_equal(a, b, exact=False):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('depth', [18, 50])
def test_dense_checkpoint_loads_and_default_is_the_dense_resnet(depth):
    dense, itd = pair(depth)
    x = torch.randn(1, 3, SIZE, SIZE + 8)
    with torch.no_grad():
        assert_outputs_equal(itd(x), dense(x), exact=True)
    assert set(itd.state_dict()) == set(dense.state_dict())


def test_resnext_and_mmseg_v1c_defaults():
    torch.manual_seed(0)
    dense = ev(randomise_bn(ResNeXt(depth=50, groups=32, base_width=4)))
    itd = ITDResNeXt(depth=50).eval()
    itd.load_state_dict(dense.state_dict(), strict=True)
    assert itd.layer2[0].conv2.groups == 32
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert_outputs_equal(itd(x), dense(x), exact=True)
    v1c = dict(depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)
    dense = ev(randomise_bn(ResNetV1c(**v1c)))
    itd = ITDResNet(**v1c, deep_stem=True).eval()
    itd.load_state_dict(dense.state_dict(), strict=True)
    assert itd.default_permutation[2] == ConvOption(1, 1, 3)  # contracted: 2 // 2
    with torch.no_grad():
        assert_outputs_equal(itd(x), dense(x), exact=True)


@pytest.mark.parametrize('strides', [(2, 1, 3, 1), (1, 2, 2, 4)])
def test_stride_option_is_the_resnet_built_with_that_stride(strides):
    torch.manual_seed(1)
    reference = ev(randomise_bn(ResNet(depth=50, strides=strides)))
    itd = ITDResNet(depth=50).eval()
    itd.load_state_dict(reference.state_dict(), strict=True)
    itd.set_permutation(stride=strides)
    x = torch.randn(1, 3, 72, 56)
    with torch.no_grad():
        assert_outputs_equal(itd(x), reference(x))


def test_stride_option_with_avg_down_shortcut_and_basic_blocks():
    torch.manual_seed(2)
    # (ResNet-18's layer1.0 has no projection: its stride option subsamples the identity)
    for depth, kwargs, strides in ((50, dict(avg_down=True), (2, 3, 2, 2)), (18, {}, (1, 3, 1, 2))):
        reference = ev(randomise_bn(ResNet(depth=depth, strides=strides, **kwargs)))
        itd = ITDResNet(depth=depth, **kwargs).eval()
        itd.load_state_dict(reference.state_dict(), strict=True)
        itd.set_permutation(stride=strides)
        x = torch.randn(1, 3, SIZE, SIZE)
        with torch.no_grad():
            assert_outputs_equal(itd(x), reference(x))


def test_dilation_option_is_mmdet_block_with_that_dilation():
    _, itd = pair(50)
    block = itd.layer3[0]
    reference = ev(Bottleneck(512, 256, stride=2, dilation=3, downsample=block.downsample))
    reference.load_state_dict(block.state_dict())
    x = torch.randn(2, 512, 15, 13)
    with torch.no_grad():
        torch.testing.assert_close(itd.dynamic_block_forward(block, x, ConvOption(2, 3, 3)),
                                   reference(x), rtol=1e-5, atol=1e-5)


def conv_macs_by_flop_analyzer(model, size):
    return FlopAnalyzer(model, torch.zeros(1, 3, *size)).by_operator()['conv']


def test_recorded_macs_match_mmengine_counter():
    strides, size = (2, 1, 4, 2), (40, 56)
    itd = ITDResNet(depth=50).eval()
    itd.set_permutation(stride=strides)
    with torch.no_grad():
        itd(torch.zeros(2, 3, *size))
    expected = conv_macs_by_flop_analyzer(ev(ResNet(depth=50, strides=strides)), size)
    assert itd.macs(size, itd.permutation) == expected
    record = itd.records
    assert torch.equal(record.executed_flops, torch.full((2,), float(expected)))
    assert record.dense_flops == conv_macs_by_flop_analyzer(ev(ResNet(depth=50)), size)
    summary = itd.sparsity_summary()
    assert set(summary.block_rates) == {'layer1', 'layer2', 'layer3', 'layer4'}


def test_macs_of_kernel_size_and_upsampling_by_hand():
    itd = ITDResNet(depth=18, dynamic_positions=('B',)).eval()
    size = (32, 32)  # stem -> 8x8; layer2.0 input 8x8, 64 -> 128 channels
    base = itd.macs(size)
    k5 = itd.macs(size, [ConvOption(2, 1, 5)])
    assert k5 - base == 4 * 4 * 64 * 128 * (25 - 9)  # only layer2.0.conv1 changes
    half = itd.permutation_from_values(stride=('1/2',))
    assert itd.plan(size, half)[1][1][0] == (16, 16)


def test_sample_permutations_match_single_runs_and_nominal_sizes():
    _, itd = pair(18, itd_kwargs=dict(output_size='nominal'))
    randomise_bn(itd)
    x = torch.randn(3, 3, SIZE, SIZE)
    perms = [itd.permutation_from_values(stride=s)
             for s in ((1, 2, 2, 2), (1, 2, 3, 2), (0.5, 2, 2, 1))]
    with torch.no_grad():
        nominal = [o.shape for o in itd(x)]
        itd.set_sample_permutations([perms[1], perms[2], perms[1]])
        mixed = itd(x)
        executed = itd.records.executed_flops
        singles = []
        for i, p in ((0, perms[1]), (1, perms[2]), (2, perms[1])):
            itd.set_permutation(p)
            singles.append(itd(x[i:i + 1]))
    assert [o.shape for o in mixed] == nominal
    for level, out in enumerate(mixed):
        torch.testing.assert_close(out, torch.cat([s[level] for s in singles]))
    assert executed[0] == executed[2] == itd.macs((SIZE, SIZE), perms[1])
    assert executed[1] > executed[0]


def test_actual_sizes_follow_the_permutation_and_mixed_sizes_are_refused():
    _, itd = pair(18)
    x = torch.randn(2, 3, SIZE, SIZE)
    itd.set_permutation(stride=(0.5, 2, 3, 2))
    with torch.no_grad():
        outs = itd(x)
    assert [o.shape[-1] for o in outs] == [20, 10, 4, 2]  # stem: 40 -> 10
    itd.set_sample_permutations([None, itd.permutation_from_values(stride=(1, 2, 3, 2))])
    with pytest.raises(ValueError, match="output_size='nominal'"):
        itd(x)


def test_option_space_and_permutations():
    itd = ITDResNet(depth=18, upsampling_positions=('B', 'C'))
    choices = itd.option_choices(dict(stride=(0.5, 1, 2)))
    assert [len(c) for c in choices] == [2, 3, 3, 2]  # no 1/2 at A and D
    perms = itd.permutations(dict(stride=(1, 2, 3)))
    assert len(perms) == 81 and perms[0] == itd.default_permutation
    grid = itd.permutations(dict(stride=(2, 3), kernel_size=(1, 3)), positions=('C', 'D'))
    assert len(grid) == 16 and all(p[:2] == itd.default_permutation[:2] for p in grid)
    # a small input leaves out what would shrink a map below min_feature_size
    itd = ITDResNet(depth=18, min_feature_size=2)
    assert len(itd.permutations(dict(stride=(2, 4)), input_size=(32, 32))) < 16


@pytest.mark.parametrize('call,message', [
    (lambda m: m.set_permutation([ConvOption(1)] * 3), 'length 3: expected 4 options'),
    (lambda m: m.set_permutation(stride=(1, 2, 5, 2)), 'position C: stride=5'),
    (lambda m: m.set_permutation(dilation=(1, 2, 6, 2)), 'position C: dilation=6'),
    (lambda m: m.set_permutation(kernel_size=(1, 2)), 'expected 4 values'),
    (lambda m: m.set_permutation(stride=(1, 2, 2, 0.5)), r'position D .*stride 1/2'),
    (lambda m: m.set_permutation(ConvOption(2)), 'a permutation is a sequence'),
    (lambda m: m.option_choices(dict(padding=(1,))), 'space='),
    (lambda m: m.macs((32, 32), m.permutation_from_values(stride=(4, 4, 4, 2))),
     r'position B with option s4-d1-k3: an input of \(32, 32\) gives a 1x1'),
])
def test_bad_permutations_name_the_position_and_option(call, message):
    itd = ITDResNet(depth=18, upsampling_positions=('A', 'B', 'C'), min_feature_size=2)
    with pytest.raises(ValueError, match=message):
        call(itd)


@pytest.mark.parametrize('kwargs,message', [
    (dict(depth=42), 'depth=42 is not supported'),
    (dict(depth=18, dynamic_positions=('A', 'E')), 'dynamic_positions'),
    (dict(depth=18, dynamic_positions=('B',), upsampling_positions=('A',)),
     'upsampling_positions'),
    (dict(depth=18, output_size='fixed'), 'output_size='),
    (dict(depth=18, style='caffe'), "style='pytorch'"),
    (dict(depth=18, min_feature_size=0), 'min_feature_size'),
    (dict(depth=18, permutation=dict(stride=(1, 2))), 'expected 4 values'),
])
def test_bad_build_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ITDResNet(**kwargs)


def test_frozen_stages_and_gradients_reach_every_weight():
    itd = ITDResNet(depth=18, frozen_stages=1).train()
    itd.set_permutation(stride=(1, 2, 3, 2), kernel_size=(3, 5, 1, 3))
    sum(o.sum() for o in itd(torch.randn(2, 3, SIZE, SIZE))).backward()
    assert itd.layer1[0].conv1.weight.grad is None  # frozen
    for position in 'BCD':
        assert itd.position_convs[position].weight.grad.abs().sum() > 0


def test_forcing_an_activation_rate_is_a_clear_error():
    """ITD has no spatial masks: a forced rate says so (and what to use), None is the
    model's own behaviour."""
    model = ITDResNet(depth=18, init_cfg=None)
    model.set_forced_activation(None)
    with pytest.raises(ValueError, match=r'no spatial masks .*set_permutation'):
        model.set_forced_activation(0.5)
