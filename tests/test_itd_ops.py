"""DynamicAttributeConv2d against independent references: the dense conv subsampled
(stride), a zero-dilated kernel (dilation), a hand-written bilinear resize (kernel
size) and the conv on the zero-upsampled input (stride 1/2)."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdyn.ops import ConvOption, DynamicAttributeConv2d, resize_kernel, transposed_weight
from mmdyn.ops.attribute_conv import HALF


def make_conv(c_in=4, c_out=6, stride=1, dilation=1, groups=1, bias=False, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation, groups, bias)
    return DynamicAttributeConv2d.from_conv(conv), conv


def dilate_kernel(weight, d):
    """A 3x3 kernel spread on a (2d+1) grid with zeros between the taps."""
    out = weight.new_zeros(*weight.shape[:2], 2 * d + 1, 2 * d + 1)
    out[..., ::d, ::d] = weight
    return out


def bilinear_by_hand(kernel: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of a [k, k] array, clamped at the border."""
    n = kernel.shape[0]
    scale = n / size

    def taps(i):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        low = min(int(math.floor(src)), n - 1)
        high = min(low + 1, n - 1)
        return low, high, src - low

    out = np.zeros((size, size))
    for i in range(size):
        y0, y1, wy = taps(i)
        for j in range(size):
            x0, x1, wx = taps(j)
            out[i, j] = ((1 - wy) * ((1 - wx) * kernel[y0, x0] + wx * kernel[y0, x1])
                         + wy * ((1 - wx) * kernel[y1, x0] + wx * kernel[y1, x1]))
    return out


@pytest.mark.parametrize('stride,dilation,bias', [(1, 1, False), (2, 1, True), (1, 2, False)])
def test_default_option_is_the_plain_conv_exactly(stride, dilation, bias):
    dynamic, conv = make_conv(stride=stride, dilation=dilation, bias=bias)
    x = torch.randn(2, 4, 11, 9)
    assert dynamic.default_option == ConvOption(stride, dilation, 3)
    assert torch.equal(dynamic(x), conv(x))
    assert torch.equal(dynamic(x, ConvOption(stride, dilation, 3)), conv(x))
    # same parameters and names: a trained state dict loads unchanged
    dynamic.load_state_dict(conv.state_dict())


@pytest.mark.parametrize('stride', [1, 2, 3, 4])
@pytest.mark.parametrize('size', [(12, 12), (13, 10)])
def test_integer_stride_is_the_dense_conv_subsampled(stride, size):
    dynamic, conv = make_conv(stride=2, groups=2)
    x = torch.randn(2, 4, *size)
    dense = F.conv2d(x, conv.weight, padding=1, groups=2)
    out = dynamic(x, ConvOption(stride, 1, 3))
    assert out.shape[2:] == tuple(math.ceil(n / stride) for n in size)
    torch.testing.assert_close(out, dense[..., ::stride, ::stride], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dilation', [1, 2, 3, 4, 5])
def test_dilation_is_a_zero_spread_kernel_with_same_padding(dilation):
    dynamic, conv = make_conv()
    x = torch.randn(1, 4, 14, 15)
    reference = F.conv2d(x, dilate_kernel(conv.weight, dilation), padding=dilation)
    out = dynamic(x, dict(stride=1, dilation=dilation, kernel_size=3))
    assert out.shape == reference.shape == (1, 6, 14, 15)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('k', [1, 5, 7, 9])
def test_kernel_size_is_a_bilinear_resize_rescaled(k):
    dynamic, conv = make_conv(bias=True)
    hand = np.stack([[bilinear_by_hand(conv.weight[o, i].detach().numpy(), k)
                      for i in range(4)] for o in range(6)]) * (3 / k) ** 2
    hand = torch.from_numpy(hand).float()
    torch.testing.assert_close(resize_kernel(conv.weight, k), hand, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 4, 10, 10)
    reference = F.conv2d(x, hand, conv.bias, padding=(k - 1) // 2)
    out = dynamic(x, ConvOption(1, 1, k))
    assert out.shape == (2, 6, 10, 10)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    if k == 1:  # the centre tap times 9
        torch.testing.assert_close(hand[..., 0, 0], 9 * conv.weight[..., 1, 1])


def test_resized_kernel_keeps_the_output_magnitude():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 0.5)
    dynamic = DynamicAttributeConv2d.from_conv(conv)
    x = torch.ones(1, 1, 21, 21)
    for k in (1, 3, 5, 7, 9):
        out = dynamic(x, ConvOption(1, 1, k))
        assert out[0, 0, 10, 10].item() == pytest.approx(4.5)  # 9 taps x 0.5


@pytest.mark.parametrize('groups,dilation,k', [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 1, 5)])
def test_stride_half_is_the_conv_on_the_zero_upsampled_input(groups, dilation, k):
    dynamic, conv = make_conv(groups=groups)
    x = torch.randn(2, 4, 7, 6)
    zeros = x.new_zeros(2, 4, 2 * 7 - 1, 2 * 6 - 1)
    zeros[..., ::2, ::2] = x
    pad = dilation * (k - 1) // 2
    padded = F.pad(zeros, (pad, pad + 1, pad, pad + 1))
    reference = F.conv2d(padded, resize_kernel(conv.weight, k), dilation=dilation, groups=groups)
    out = dynamic(x, ConvOption(HALF, dilation, k))
    assert out.shape == reference.shape == (2, 6, 14, 12)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_transposed_weight_at_stride_one_is_the_conv():
    weight = torch.randn(6, 2, 3, 3)  # groups=2, 4 -> 6 channels
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(
        F.conv_transpose2d(x, transposed_weight(weight, 2), padding=1, groups=2),
        F.conv2d(x, weight, padding=1, groups=2), rtol=1e-5, atol=1e-5)


def test_stride_half_accepts_its_spellings():
    for value in (0.5, '1/2', Fraction(1, 2)):
        assert ConvOption(value).stride == HALF and ConvOption(value).upsamples
    assert str(ConvOption(0.5, 2, 5)) == 's1/2-d2-k5'
    assert ConvOption(0.5).output_size((5, 7)) == (10, 14)
    assert ConvOption(3).output_size((5, 7)) == (2, 3)


def test_macs_count_the_products_needed():
    dynamic, _ = make_conv(c_in=4, c_out=6, groups=2)
    per_position = 4 * 6 * 9 // 2
    assert dynamic.macs((10, 10)) == 100 * per_position
    assert dynamic.macs((10, 10), ConvOption(3)) == 16 * per_position
    assert dynamic.macs((10, 10), ConvOption(1, 1, 5)) == 100 * 4 * 6 * 25 // 2
    assert dynamic.macs((10, 10), ConvOption(HALF)) == 100 * per_position


@pytest.mark.parametrize('bad,message', [
    (dict(stride=5), 'stride=5 is not an allowed stride'),
    (dict(stride=0.25), 'stride=0.25'),
    (dict(stride=True), 'stride=True'),
    (dict(dilation=6), 'dilation=6 is not allowed'),
    (dict(kernel_size=4), 'kernel_size=4 is not allowed'),
    (dict(padding=1), "unknown attributes ['padding']"),
])
def test_bad_options_are_named(bad, message):
    dynamic, _ = make_conv()
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        dynamic(torch.zeros(1, 4, 8, 8), bad)


def test_upsampling_can_be_forbidden_and_geometry_is_checked():
    conv = DynamicAttributeConv2d(4, 4, 3, padding=1, allow_upsampling=False, name='pos B')
    with pytest.raises(ValueError, match='pos B: stride 1/2 .* not allowed'):
        conv.set_option(ConvOption(0.5))
    with pytest.raises(ValueError, match='wraps a 3x3 conv'):
        DynamicAttributeConv2d(4, 4, 5, padding=2)
    with pytest.raises(ValueError, match='padding=.* must be dilation'):
        DynamicAttributeConv2d(4, 4, 3, padding=0)
