"""Folded convolutions on whole maps (mmdyn/ops/dense_conv.py): every kernel computes
``F.conv2d`` (strided, padded, dilated, grouped, ReLU fused, batches, odd sizes), the
prepacked weight follows the input shape and in-place weight changes and does not
travel with copies, only float32 CPU maps can take the oneDNN kernel, and FoldedConv
with ``relu`` equals its convolution then ReLU."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from mmdyn.ops import FoldedConv
from mmdyn.ops.dense_conv import DENSE_CONV, dense_conv, packed_conv_weight, pixel_class
from mmdyn.ops.kernel_choice import CHOOSER, ENV_PINS

IMPLS = sorted(DENSE_CONV.candidates)
CL = torch.channels_last

# (batch, in, out, height, width, kernel, stride, padding, dilation, groups)
SETTINGS = [
    (1, 16, 24, 7, 7, 3, 1, 1, 1, 1),
    (2, 12, 20, 13, 9, 3, 2, 1, 1, 1),
    (1, 8, 8, 11, 17, 3, 1, 2, 2, 2),
    (3, 32, 16, 5, 6, 1, 2, 0, 1, 1),
    (1, 64, 8, 9, 9, 3, 1, 1, 1, 2),
    (1, 6, 10, 15, 4, 7, 2, 3, 1, 1),
    (0, 8, 8, 5, 5, 3, 1, 1, 1, 1),
]


def reference(x, weight, bias, stride, padding, dilation, groups, relu):
    out = F.conv2d(x.double(), weight.double(), bias.double(), stride, padding, dilation,
                   groups)
    return out.relu() if relu else out


def relative_error(a, b):
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('setting', SETTINGS, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('relu', [False, True], ids=['linear', 'relu'])
def test_every_dense_conv_kernel_computes_the_convolution(impl, setting, relu, monkeypatch):
    monkeypatch.setenv(ENV_PINS, f'dense_conv={impl}')
    batch, cin, cout, h, w, k, stride, padding, dilation, groups = setting
    x = torch.randn(batch, cin, h, w).contiguous(memory_format=CL)
    weight = torch.randn(cout, cin // groups, k, k).contiguous(memory_format=CL)
    bias = torch.randn(cout)
    out = dense_conv(x, weight, bias, stride, padding, dilation, groups, relu)
    want = reference(x, weight, bias, stride, padding, dilation, groups, relu)
    assert out.shape == want.shape and out.dtype == torch.float32
    if want.numel():
        assert relative_error(out, want) < 1e-5
        assert out.is_contiguous(memory_format=CL)


@pytest.mark.skipif('conv_packed' not in DENSE_CONV.candidates,
                    reason='this torch build has no prepacked oneDNN convolution')
def test_packed_weight_follows_the_input_shape_and_weight_changes(monkeypatch):
    """One packing per weight, rebuilt for another input shape or thread count (the
    layout oneDNN picks depends on them) and after an in-place change of the weight; a
    weight carrying one still deep-copies and pickles."""
    monkeypatch.setenv(ENV_PINS, 'dense_conv=conv_packed')
    weight = torch.randn(24, 16, 3, 3).contiguous(memory_format=CL)
    bias = torch.randn(24)
    for hw in ((9, 9), (5, 12), (9, 9)):
        x = torch.randn(1, 16, *hw).contiguous(memory_format=CL)
        out = dense_conv(x, weight, bias, 1, 1, 1, 1)
        assert relative_error(out, reference(x, weight, bias, 1, 1, 1, 1, False)) < 1e-5
    weight.mul_(-2)
    out = dense_conv(x, weight, bias, 1, 1, 1, 1)
    assert relative_error(out, reference(x, weight, bias, 1, 1, 1, 1, False)) < 1e-5
    copied = copy.deepcopy(weight)
    assert torch.equal(copied, weight)
    assert torch.equal(pickle.loads(pickle.dumps(weight)), weight)
    out = dense_conv(x, copied, bias, 1, 1, 1, 1)
    assert relative_error(out, reference(x, copied, bias, 1, 1, 1, 1, False)) < 1e-5
    # and the thread count: oneDNN's layout may depend on it
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        at_two = packed_conv_weight(weight, x.shape, 1, 1, 1, 1)
        assert packed_conv_weight(weight, x.shape, 1, 1, 1, 1) is at_two
        torch.set_num_threads(1)
        assert packed_conv_weight(weight, x.shape, 1, 1, 1, 1) is not at_two
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float64])
def test_other_dtypes_take_the_portable_kernel(dtype):
    """oneDNN's packed convolution serves float32 CPU maps only: another dtype is never
    timed with it, and the result is F.conv2d's."""
    shape = (str(dtype).replace('torch.', ''), 64, 8, 8, 3, 1, 1, 1, 1)
    assert CHOOSER.choose('dense_conv', shape, 'cpu') == 'conv2d'
    assert CHOOSER.choose('dense_conv', shape, 'meta') == 'conv2d'
    x = torch.randn(1, 8, 6, 6, dtype=dtype).contiguous(memory_format=CL)
    weight = torch.randn(8, 8, 3, 3, dtype=dtype)
    bias = torch.randn(8, dtype=dtype)
    out = dense_conv(x, weight, bias, 1, 1, 1, 1, relu=True)
    assert out.dtype == dtype
    assert torch.equal(out, F.conv2d(x, weight, bias, 1, 1).relu())


def test_packed_candidate_needs_a_working_op(monkeypatch):
    """The packed kernel is a candidate only where torch's internal op exists and
    computes a strided, padded, grouped convolution right; else conv2d alone runs."""
    from mmdyn.ops import dense_conv as module
    assert module._packed_works() == ('conv_packed' in DENSE_CONV.candidates)
    monkeypatch.setattr(module, '_POINTWISE', None)
    assert not module._packed_works()

    def wrong(x, weight, *args):
        return torch.zeros(1)
    monkeypatch.setattr(module, '_POINTWISE', wrong)
    monkeypatch.setattr(module, '_REORDER', lambda weight, *args: weight)
    assert not module._packed_works()


def test_pixel_classes():
    assert [pixel_class(n) for n in (1, 64, 65, 49 * 2, 4096, 10 ** 7)] == \
        [64, 64, 256, 256, 4096, 65536]


@pytest.mark.parametrize('layout', ['channels_last', 'contiguous'])
@pytest.mark.parametrize('setting', [(3, 2, 1, 1), (3, 1, 2, 2), (1, 1, 0, 1), (1, 2, 0, 1)],
                         ids=['3x3-s2', '3x3-d2-g2', '1x1', '1x1-s2'])
def test_folded_conv_with_relu_is_the_conv_then_relu(setting, layout):
    """Every route of FoldedConv (matrix product, measured dense kernel, F.conv2d on
    NCHW maps) with the ReLU fused equals the convolution followed by ReLU."""
    k, stride, padding, groups = setting
    dilation = 2 if padding == 2 else 1
    folded = FoldedConv(torch.randn(12, 8 // groups, k, k), torch.randn(12), stride,
                        dilation, padding, groups)
    x = torch.randn(2, 8, 11, 10)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=CL)
    want = reference(x, folded.weight, folded.bias, stride, padding, dilation, groups, True)
    assert relative_error(folded(x, relu=True), want) < 1e-5
    linear = reference(x, folded.weight, folded.bias, stride, padding, dilation, groups,
                       False)
    assert relative_error(folded(x), linear) < 1e-5


@pytest.mark.parametrize('layout', ['channels_last', 'contiguous'])
@pytest.mark.parametrize('setting', [(3, 2, 1, 1), (1, 1, 0, 1), (1, 2, 0, 1), (1, 1, 0, 2)],
                         ids=['3x3-s2', '1x1', '1x1-s2', '1x1-g2'])
@pytest.mark.parametrize('relu', [False, True])
def test_accumulate_map_adds_the_conv_onto_the_map(setting, layout, relu):
    """``out += conv(x)`` on whole maps: in place on ``out`` for a 1x1 unstrided conv
    on channels-last maps (the product accumulated), a new sum otherwise; against
    F.conv2d plus the map."""
    k, stride, padding, groups = setting
    folded = FoldedConv(torch.randn(12, 8 // groups, k, k), torch.randn(12), stride, 1,
                        padding, groups)
    x = torch.randn(2, 8, 11, 10)
    out = torch.randn(2, 12, (11 + 2 * padding - k) // stride + 1,
                      (10 + 2 * padding - k) // stride + 1)
    if layout == 'channels_last':
        x, out = x.contiguous(memory_format=CL), out.contiguous(memory_format=CL)
    want = reference(x, folded.weight, folded.bias, stride, padding, 1, groups, False) + out
    want = want.relu() if relu else want
    got = folded.accumulate_map_(out, x, relu=relu)
    assert relative_error(got, want) < 1e-5
    in_place = layout == 'channels_last' and setting in ((1, 1, 0, 1), )
    assert (got.data_ptr() == out.data_ptr()) == in_place
