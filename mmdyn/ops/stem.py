"""A ResNet stem's conv, ReLU and max-pool, on the whole map or band by band.

The stem's conv writes the largest map of the network (at 800x1216, 64 channels at
400x608: 62 MB), which the max-pool reads once and drops. A buffer that large is
mapped fresh from the OS on every forward by glibc's default allocator (its reuse
threshold stops at 32 MB), and each first touch of a page faults: filling a fresh
62 MB tensor took 18.7 ms against 1.5 ms for a reused one, and the stem (conv, ReLU,
max-pool) 45.2 ms on the whole map against 28.5-29.2 ms band by band (8-32 pooled rows
a band; AMD EPYC family 25, 2 threads, 2026-12-05). Two ways compute it:

* ``whole``: the folded conv with its ReLU on the whole map, then the max-pool;
* ``banded``: a band of pooled rows at a time, the conv on the input rows that band
  reads (no padded copy of the image), ReLU'd and pooled while it is in cache, written
  into the pooled map. The conv's outputs are non-negative after the ReLU, so the zero
  rows that pad a band above and below the map pool as the max-pool's ``-inf`` padding
  does (every pooling window holds one pixel of the map).

Which is faster depends on the allocator, the CPU and the map (a small map never
faults), so :mod:`.kernel_choice` times both per shape class where the code runs;
``banded`` serves CPU tensors (a CUDA caching allocator maps nothing per forward).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense_conv import TIMING_ELEMENTS
from .gemm import dtype_name
from .kernel_choice import CHOOSER, KernelOp, Serves
from .sparse_conv import FoldedConv

#: conv output elements per band (4 MB of fp32: at 800x1216, bands of 8 to 32 pooled rows
#: ran alike, 4 rows and 64 slower)
BAND_ELEMENTS = 1 << 20


def _out_length(size: int, reach: int, stride: int, padding: int) -> int:
    """Output length of a conv or pool whose window spans ``reach`` inputs."""
    return (size + 2 * padding - reach) // stride + 1


def _conv_output(x: Tensor, conv: FoldedConv) -> Tuple[int, int, int]:
    """``(reach, height, width)``: the input rows or columns one conv output spans, and
    the conv output's size for the map ``x``."""
    reach = conv.dilation * (conv.weight.shape[-1] - 1) + 1
    return (reach, _out_length(x.shape[2], reach, conv.stride, conv.padding),
            _out_length(x.shape[3], reach, conv.stride, conv.padding))


def _pool_setting(pool: nn.MaxPool2d) -> Optional[Tuple[int, int, int]]:
    """``(kernel, stride, padding)`` of a square max-pool, None for another one."""
    pairs = [value if isinstance(value, tuple) else (value, value)
             for value in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding)]
    if any(pair[0] != pair[1] for pair in pairs):
        return None
    return tuple(pair[0] for pair in pairs)


def _whole(x: Tensor, conv: FoldedConv, pool: nn.MaxPool2d) -> Tensor:
    return pool(conv(x, relu=True))


def _banded(x: Tensor, conv: FoldedConv, pool: nn.MaxPool2d) -> Tensor:
    """``pool(relu(conv(x)))`` a band of about ``BAND_ELEMENTS`` conv outputs at a time
    (module docstring)."""
    conv = conv.cast(x.dtype)
    kernel, stride, padding = _pool_setting(pool)
    reach, conv_h, conv_w = _conv_output(x, conv)
    height = x.shape[2]
    pooled_h = _out_length(conv_h, kernel, stride, padding)
    pooled_w = _out_length(conv_w, kernel, stride, padding)
    channels = conv.weight.shape[0]
    out = torch.empty(x.shape[0], channels, pooled_h, pooled_w, dtype=x.dtype,
                      device=x.device, memory_format=torch.channels_last)
    band = max(1, BAND_ELEMENTS // (stride * conv_w * channels * x.shape[0]))
    weight = conv.weight_channels_last
    for first in range(0, pooled_h, band):
        last = min(pooled_h, first + band)
        # conv rows the pooled rows [first, last) read, and the input rows those read
        top, bottom = first * stride - padding, (last - 1) * stride - padding + kernel
        rows = slice(max(top, 0), min(bottom, conv_h))
        start = rows.start * conv.stride - conv.padding
        stop = (rows.stop - 1) * conv.stride - conv.padding + reach
        low = min(max(start, 0), height)  # the rows inside the map (maybe none)
        high = max(min(stop, height), low)
        inputs = x[:, :, low:high]
        above, below = max(0, min(stop, low) - start), max(0, stop - max(start, high))
        if above or below:  # the conv's zero padding above or below the map
            inputs = F.pad(inputs, (0, 0, above, below))
        maps = F.conv2d(inputs, weight, conv.bias, conv.stride, (0, conv.padding),
                        conv.dilation).relu_()
        if top < 0 or bottom > conv_h:  # the pool's padding: zeros pool as -inf here
            maps = F.pad(maps, (0, 0, max(0, -top), max(0, bottom - conv_h)))
        out[:, :, first:last] = F.max_pool2d(maps, kernel, stride, (0, padding))
    return out


def _timing_inputs(shape_class):
    """A channels-last input whose conv output has about the class's pixel count (capped
    at 64 MB), the conv and the max-pool of the class."""
    (dtype, batch, in_channels, out_channels, kernel, stride, dilation, padding,
     pool_kernel, pool_stride, pool_padding, pixels_log2) = shape_class
    pixels = min(2 ** pixels_log2, TIMING_ELEMENTS // (batch * out_channels))
    side = max(dilation * (kernel - 1) + 1, math.isqrt(max(1, pixels)) * stride)
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)
    x = torch.randn(batch, in_channels, side, side, generator=generator).to(dtype).contiguous(
        memory_format=torch.channels_last)
    conv = FoldedConv(torch.randn(out_channels, in_channels, kernel, kernel,
                                  generator=generator).to(dtype),
                      torch.zeros(out_channels, dtype=dtype), stride, dilation, padding)
    return x, conv, nn.MaxPool2d(pool_kernel, pool_stride, pool_padding)


STEM_CONV_POOL = CHOOSER.register(KernelOp(
    'stem_conv_pool', {'whole': _whole, 'banded': _banded}, _timing_inputs,
    {'banded': Serves(devices=frozenset({'cpu'}))}))


def bandable(x: Tensor, conv: FoldedConv, pool) -> bool:
    """Whether the banded way computes this stem: a square max-pool (no dilation,
    floor mode, no indices), an ungrouped conv, and no gradient to record."""
    return (type(pool) is nn.MaxPool2d and pool.dilation in (1, (1, 1))
            and _pool_setting(pool) is not None
            and not pool.ceil_mode and not pool.return_indices and conv.groups == 1
            and x.dim() == 4 and not (torch.is_grad_enabled() and (
                x.requires_grad or conv.weight.requires_grad)))


def stem_conv_pool(x: Tensor, conv: FoldedConv, pool) -> Tensor:
    """``pool(relu(conv(x)))`` (``conv`` a BatchNorm-folded stem conv, ``pool`` the
    stem's max-pool) the way measured faster for its shape class: the conv's and the
    pool's setting and the log2 of the conv output's pixel count (images of about one
    size share it)."""
    if not bandable(x, conv, pool):
        return _whole(x, conv, pool)
    _, conv_h, conv_w = _conv_output(x, conv)
    shape = (dtype_name(x), x.shape[0], x.shape[1], conv.weight.shape[0],
             conv.weight.shape[-1], conv.stride, conv.dilation, conv.padding,
             *_pool_setting(pool), round(math.log2(max(1, conv_h * conv_w))))
    impl = CHOOSER.choose('stem_conv_pool', shape, x.device)
    return STEM_CONV_POOL.candidates[impl](x, conv, pool)
