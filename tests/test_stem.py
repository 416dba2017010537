"""The stem's conv, ReLU and max-pool, whole or band by band (mmdyn/ops/stem.py)."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdyn.ops import stem as stem_module
from mmdyn.ops.kernel_choice import ENV_PINS, KernelChooser
from mmdyn.ops.sparse_conv import FoldedConv
from mmdyn.ops.stem import STEM_CONV_POOL, bandable, stem_conv_pool


def reference(x, conv: FoldedConv, pool: nn.MaxPool2d):
    """F.conv2d on the whole NCHW map, ReLU, F.max_pool2d: the independent reference."""
    out = F.conv2d(x.contiguous(), conv.weight, conv.bias, conv.stride, conv.padding,
                   conv.dilation).relu()
    return F.max_pool2d(out, pool.kernel_size, pool.stride, pool.padding)


def random_stems(count: int, seed: int):
    """Random odd-sized inputs, batch sizes, convs and pools whose output is not empty."""
    rng = random.Random(seed)
    made = 0
    while made < count:
        kernel, stride, dilation = rng.choice([1, 3, 5, 7]), rng.choice([1, 2, 3]), \
            rng.choice([1, 2])
        padding = rng.choice([0, 1, kernel // 2, 3])
        pool_kernel = rng.choice([2, 3, 5])
        pool = nn.MaxPool2d(pool_kernel, rng.choice([1, 2, 3]), rng.choice([0, pool_kernel // 2]))
        height, width = rng.randint(dilation * kernel, 61), rng.randint(dilation * kernel, 61)
        conv_h, conv_w = ((size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
                          for size in (height, width))
        if min(conv_h, conv_w) + 2 * pool.padding < pool_kernel:
            continue
        generator = torch.Generator().manual_seed(seed * 1000 + made)
        in_channels, out_channels = rng.choice([1, 3, 4]), rng.choice([8, 16])
        x = torch.randn(rng.choice([1, 2, 3]), in_channels, height, width,
                        generator=generator).contiguous(memory_format=torch.channels_last)
        conv = FoldedConv(torch.randn(out_channels, in_channels, kernel, kernel,
                                      generator=generator),
                          torch.randn(out_channels, generator=generator), stride, dilation,
                          padding)
        made += 1
        yield x, conv, pool, rng.choice([1, 40, 700, 1 << 20])


@pytest.mark.parametrize('way', ['banded', 'whole'])
def test_both_ways_equal_the_dense_reference(way, monkeypatch):
    """Pinned either way, on random odd sizes, batches, convs (stride, dilation, padding
    wider than the kernel's reach) and pools, with bands from one pooled row to the
    whole map: the output equals F.conv2d, ReLU and F.max_pool2d on the whole map."""
    monkeypatch.setenv(ENV_PINS, f'stem_conv_pool={way}')
    ran = []
    original = STEM_CONV_POOL.candidates[way]
    monkeypatch.setitem(STEM_CONV_POOL.candidates, way,
                        lambda *args: ran.append(way) or original(*args))
    for x, conv, pool, band in random_stems(60, seed=1 if way == 'banded' else 2):
        monkeypatch.setattr(stem_module, 'BAND_ELEMENTS', band)
        with torch.no_grad():
            got = stem_conv_pool(x, conv, pool)
        want = reference(x, conv, pool)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert ran == [way] * 60


def test_a_resnet_stem_band_by_band_equals_mmdets_stem(monkeypatch):
    """A default dynamic backbone's stem (BatchNorm folded on its sparse path, the way
    chosen by measurement, then pinned to bands of two pooled rows) equals mmdet's stem
    and max-pool on an odd-sized input of a batch of two; the FLOPs count the stem
    conv's output pixels."""
    from mmdyn.models.backbones import LASResNet
    torch.manual_seed(0)
    backbone = LASResNet(depth=18, granularity=[4, 2, 2, 1]).eval()
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 77, 101).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = backbone.maxpool(backbone.relu(backbone.norm1(backbone.conv1(x))))
        backbone.set_execution_mode('sparse')
        measured, flops = backbone.stem_forward(x)
        monkeypatch.setenv(ENV_PINS, 'stem_conv_pool=banded')
        monkeypatch.setattr(stem_module, 'BAND_ELEMENTS', 2 * 2 * 51 * 64 * 2)
        banded, _ = backbone.stem_forward(x)
    for got in (measured, banded):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert flops == 39 * 51 * 3 * 64 * 49


def test_gradients_and_other_pools_run_whole(monkeypatch):
    """A recorded gradient, a ceil-mode, dilated or non-square pool and a grouped conv
    run the whole map even where bands are pinned."""
    monkeypatch.setenv(ENV_PINS, 'stem_conv_pool=banded')
    monkeypatch.setitem(STEM_CONV_POOL.candidates, 'banded', None)  # must not be called
    conv = FoldedConv(torch.randn(8, 3, 7, 7), torch.randn(8), 2, 1, 3)
    pool = nn.MaxPool2d(3, 2, 1)
    x = torch.randn(1, 3, 33, 41).contiguous(memory_format=torch.channels_last)
    source = x.clone().requires_grad_()
    assert bandable(x, conv, pool) and not bandable(source, conv, pool)
    torch.testing.assert_close(stem_conv_pool(source, conv, pool), reference(x, conv, pool),
                               rtol=1e-4, atol=1e-4)
    for other in (nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(3, 2, 1, dilation=2),
                  nn.MaxPool2d((3, 2), 2, 1), nn.AvgPool2d(3, 2, 1)):
        assert not bandable(x, conv, other)
        with torch.no_grad():
            torch.testing.assert_close(stem_conv_pool(x, conv, other),
                                       other(F.conv2d(x, conv.weight, conv.bias, 2, 3).relu()))
    grouped = FoldedConv(torch.randn(6, 1, 3, 3), torch.randn(6), 1, 1, 1, 3)
    assert not bandable(x, grouped, pool)


def test_the_choice_times_both_ways_on_cpu_only(tmp_path):
    """The class's timing inputs run both ways to the same map, a measurement times
    both on CPU tensors; elsewhere (``meta``) only the whole map serves."""
    chooser = KernelChooser(cache_dir=tmp_path)
    chooser.register(STEM_CONV_POOL)
    shape_class = ('float32', 1, 3, 16, 7, 2, 1, 3, 3, 2, 1, 12)
    inputs = STEM_CONV_POOL.make_inputs(shape_class)
    with torch.no_grad():
        ways = {name: fn(*inputs) for name, fn in STEM_CONV_POOL.candidates.items()}
        torch.testing.assert_close(ways['banded'], ways['whole'])
        assert ways['whole'].shape[2] * 2 * ways['whole'].shape[3] * 2 == pytest.approx(
            2 ** 12, rel=0.1)
        fastest, seconds = chooser.measure('stem_conv_pool', shape_class)
    assert set(seconds) == {'banded', 'whole'} and fastest in seconds
    assert STEM_CONV_POOL.eligible('meta', torch.float32) == ['whole']


@pytest.mark.parametrize('way', ['banded', 'whole'])
def test_bfloat16_maps_run_with_the_float_weights_cast(way, monkeypatch):
    """A bfloat16 map with a float32 folded conv: both ways cast the conv and match the
    float reference within bfloat16's precision."""
    monkeypatch.setenv(ENV_PINS, f'stem_conv_pool={way}')
    torch.manual_seed(0)
    conv = FoldedConv(torch.randn(16, 3, 7, 7) / 10, torch.randn(16), 2, 1, 3)
    x = torch.randn(2, 3, 45, 38).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = stem_conv_pool(x.bfloat16(), conv, nn.MaxPool2d(3, 2, 1))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference(x, conv, nn.MaxPool2d(3, 2, 1)),
                               rtol=3e-2, atol=3e-2)
