"""A LAS block's dense conv1 and its gate logits, two ways, chosen by measurement.

The gate decides per patch from the logit difference of the masker's 1x1 conv on the
input pooled to the patch grid (LAS Fig. 2). Pooling and a 1x1 conv are both linear,
so the difference can also run as one more output channel of the block's conv1 at full
resolution and be pooled afterwards (LAS App. B.1: ``fused``). One output channel more
is not free: oneDNN's product with 65 outputs took 14.6 ms against 10.8 ms for 64 on a
stage-1 map of LAS-ResNet-101 at 800x1216 (60800 pixel rows, 256 inputs; 72 or 80
outputs as slow as 65), while pooling that map and the tiny conv (``pooled``) took 1.7
ms; at stage 3 (3800 rows, 1024 -> 256) 9.78 against 9.03 + 0.26 ms (AMD EPYC family
25, 2 threads, 2026-12-05). Which is faster depends on the CPU and the shape, so
:mod:`.kernel_choice` times both per shape class where the code runs. Both give the
logits on the patch grid; ``pooled`` computes them as the masker itself does.
"""
import math

import torch
import torch.nn.functional as F

from .dense_conv import TIMING_ELEMENTS, pixel_class
from .gemm import dtype_name
from .kernel_choice import CHOOSER, KernelOp
from .sparse_conv import FoldedConv


def _pooled(x, conv1: FoldedConv, gate: FoldedConv, fused: FoldedConv, grid_shape):
    return conv1(x), F.conv2d(F.adaptive_avg_pool2d(x, grid_shape), gate.weight, gate.bias)


def _fused(x, conv1: FoldedConv, gate: FoldedConv, fused: FoldedConv, grid_shape):
    out = fused(x)
    return out[:, :-1], F.adaptive_avg_pool2d(out[:, -1:], grid_shape)


def _timing_inputs(shape_class):
    """A square channels-last map of the class's pixel count (capped at 64 MB) and a
    grid of 8x8-pixel patches."""
    dtype, pixels, in_channels, out_channels = shape_class
    side = max(1, math.isqrt(min(pixels, TIMING_ELEMENTS // (in_channels + out_channels))))
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)
    x = torch.randn(1, in_channels, side, side, generator=generator).to(dtype).contiguous(
        memory_format=torch.channels_last)

    def conv(outputs):
        return FoldedConv(torch.randn(outputs, in_channels, 1, 1, generator=generator)
                          .to(dtype), torch.zeros(outputs, dtype=dtype))
    conv1, gate = conv(out_channels), conv(1)
    fused = FoldedConv(torch.cat([conv1.weight, gate.weight]), torch.cat([conv1.bias,
                                                                          gate.bias]))
    rows = -(-side // 8)
    return x, conv1, gate, fused, (rows, rows)


CONV1_GATE = CHOOSER.register(KernelOp('conv1_gate', {'pooled': _pooled, 'fused': _fused},
                                       _timing_inputs))


def conv1_and_gate(x, conv1: FoldedConv, gate: FoldedConv, fused, grid_shape):
    """``(conv1(x), gate logits [B, 1, rows, cols])`` for a channels-last map ``x``:
    ``gate`` is the masker's logit difference as a 1x1 conv, ``fused()`` returns the
    cached conv1 with that difference appended as one more output (built only when that
    way runs)."""
    shape = (dtype_name(x), pixel_class(x.shape[0] * x.shape[2] * x.shape[3]), x.shape[1],
             conv1.out_channels)
    impl = CHOOSER.choose('conv1_gate', shape, x.device)
    return CONV1_GATE.candidates[impl](x, conv1, gate, fused() if impl == 'fused' else None,
                                       grid_shape)
