"""Folded convolutions on whole maps, with the kernel chosen by measurement.

The parts of a dynamic network that run densely (a static block, a SAR transition,
base branch and region selector, a dense route's grouped convolutions) are
BatchNorm-folded convolutions on channels-last maps. Two kernels compute each:

* ``conv2d``: ``F.conv2d`` (oneDNN for float32 CPU maps), which reorders the plain
  weight into oneDNN's blocked layout on *every* call;
* ``conv_packed``: oneDNN's convolution (``torch.ops.mkldnn._convolution_pointwise``)
  on the weight reordered once for the input's exact shape (the layout oneDNN picks
  depends on it; one packing per weight, for its last input shape and thread count),
  ReLU fused.

On small maps the per-call reorder costs as much as the convolution (2 threads,
AMD EPYC family 26, 2026-12-04: a 3x3 512 -> 512 conv on a 7x7 map 0.76 ms plain
against 0.41 ms packed; a strided one on 14x14 0.81 against 0.45 ms); on large maps it
matters little, and a packed weight can also be the slower one (a grouped 1x1
64 -> 256 conv on a 56x56 map: 0.76 against 0.17 ms, at 1 thread 0.24 against 3.29 ms).
So :mod:`.kernel_choice` times both per shape class (dtype, pixel-count class,
channels, kernel, stride, padding, dilation, groups) where the code runs. The packed
kernel serves float32 CPU tensors only; everything else runs ``conv2d``.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .gemm import _POINTWISE, _REORDER, count_class, dtype_name, packed_for
from .kernel_choice import CHOOSER, CPU_FLOAT32, KernelOp

#: input pixel-count classes (batch x height x width): a choice is measured once per
#: class and convolution setting; the last takes every larger map
PIXEL_CLASSES = (64, 256, 1024, 4096, 16384, 65536)
#: synthetic inputs for timing stay below this many elements (64 MB of fp32)
TIMING_ELEMENTS = 1 << 24


def _conv2d(x, weight, bias, stride, padding, dilation, groups, relu):
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return out.relu_() if relu else out


def packed_conv_weight(weight: Tensor, shape, stride: int, padding: int, dilation: int,
                       groups: int) -> Tensor:
    """``weight`` reordered into oneDNN's layout for inputs of exactly ``shape``
    (cached on the weight: one packing, for the last shape and thread count; rebuilt
    when the weight is modified in place)."""
    shape = tuple(shape)
    return packed_for(weight, ('dense', stride, padding, dilation, groups), shape,
                      lambda w: _REORDER(w, [padding] * 2, [stride] * 2, [dilation] * 2,
                                         groups, list(shape)))


def _conv_packed(x, weight, bias, stride, padding, dilation, groups, relu):
    if x.numel() == 0 or not CPU_FLOAT32.covers(x.device, x.dtype):  # oneDNN refuses
        return _conv2d(x, weight, bias, stride, padding, dilation, groups, relu)
    packed = packed_conv_weight(weight, x.shape, stride, padding, dilation, groups)
    return _POINTWISE(x, packed, bias, [padding] * 2, [stride] * 2, [dilation] * 2, groups,
                      'relu' if relu else 'none', [], None)


def _packed_works() -> bool:
    """The build has the packed convolution and it computes a strided, padded, grouped
    convolution with ReLU right (on a channels-last map)."""
    if _POINTWISE is None or _REORDER is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 7, 6, generator=generator).contiguous(
            memory_format=torch.channels_last)
        weight = torch.randn(6, 2, 3, 3, generator=generator).contiguous(
            memory_format=torch.channels_last)
        bias = torch.randn(6, generator=generator)
        got = _conv_packed(x, weight.clone(), bias, 2, 2, 2, 2, True)
        want = F.conv2d(x, weight, bias, 2, 2, 2, 2).relu()
        return got.shape == want.shape and bool(torch.allclose(got, want, atol=1e-5))
    except (RuntimeError, TypeError):
        return False


def pixel_class(pixels: int) -> int:
    return count_class(pixels, PIXEL_CLASSES)


def _timing_inputs(shape_class):
    """A square channels-last map of the class's pixel count (capped at 64 MB)."""
    dtype, pixels, in_channels, out_channels, kernel, stride, padding, dilation, groups = \
        shape_class
    pixels = min(pixels, TIMING_ELEMENTS // max(in_channels, out_channels))
    side = max(kernel + (kernel - 1) * (dilation - 1), math.isqrt(max(pixels, 1)))
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)
    x = torch.randn(1, in_channels, side, side, generator=generator).to(dtype).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(out_channels, in_channels // groups, kernel, kernel,
                         generator=generator).to(dtype).contiguous(
        memory_format=torch.channels_last)
    return (x, weight, torch.zeros(out_channels, dtype=dtype), stride, padding, dilation,
            groups, False)


_CANDIDATES = {'conv2d': _conv2d}
if _packed_works():
    _CANDIDATES['conv_packed'] = _conv_packed
DENSE_CONV = CHOOSER.register(KernelOp('dense_conv', _CANDIDATES, _timing_inputs,
                                       {'conv_packed': CPU_FLOAT32}))


def dense_conv(x: Tensor, weight: Tensor, bias, stride: int, padding: int, dilation: int,
               groups: int, relu: bool = False) -> Tensor:
    """``F.conv2d(x, weight, bias, ...)`` (then ReLU if ``relu``) on a whole map, by the
    kernel measured fastest for its shape class on this device."""
    shape = (dtype_name(x), pixel_class(x.shape[0] * x.shape[2] * x.shape[3]), x.shape[1],
             weight.shape[0], weight.shape[-1], stride, padding, dilation, groups)
    impl = CHOOSER.choose('dense_conv', shape, x.device)
    return DENSE_CONV.candidates[impl](x, weight, bias, stride, padding, dilation, groups,
                                       relu)
