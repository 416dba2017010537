"""Pixel-level sampling and interpolation (SFSI: Xie et al., "Spatially Adaptive
Inference with Stochastic Feature Sampling and Interpolation", ECCV 2020).

A sampling mask says, per output pixel of a conv, whether the pixel is computed. The
unsampled pixels are filled by normalised Gaussian interpolation (SFSI Eq. 3):

    out = M * F + (1 - M) * (G * (M * F)) / (G * M + eps)

with ``G`` a ``k x k`` Gaussian applied depthwise. The kernel follows the reference
code's parametrisation, ``G(d) = s^2 / (2 pi) * exp(-s^2 / 2 * |d|^2)``: ``s`` is an
inverse width, learnable per layer. ``G`` is separable, ``G = g (x) g`` with
``g(d) = |s| / sqrt(2 pi) * exp(-s^2 / 2 * d^2)``, so the sparse path blurs with two
1-D passes (``2k`` instead of ``k^2`` multiply-adds per pixel and channel).

The sparse executors work on *pixel rows* (channels-last ``[B * H * W, C]`` matrices):
a 1x1 conv on sampled pixels is one row gather and one GEMM; a 3x3 conv one gather of
the 9 *tap rows* of every sampled output pixel (a zero row for taps outside the map)
and one GEMM; a deformable 3x3 conv gathers its taps bilinearly.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gemm import TIMING_ELEMENTS, dtype_name, gather_gemm, gemm, row_class
from .kernel_choice import CHOOSER, CPU_FLOAT32, KernelOp
from .native import native_kernels
from .patches import pixel_rows

SAMPLING_VARIANTS = ('stochastic', 'deterministic', 'relu')


def check_sampling_variant(variant: str) -> str:
    if variant not in SAMPLING_VARIANTS:
        raise ValueError(f'sampling={variant!r} is not one of {SAMPLING_VARIANTS}')
    return variant


def check_grid_prior(interval) -> Optional[int]:
    """``None`` disables the grid prior; otherwise a positive int step."""
    if interval is None:
        return None
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f'grid_prior_interval={interval!r}: the grid-prior step must be '
                         'an int >= 1 (every k-th position is always sampled), or None '
                         'to disable the grid prior')
    return interval


def check_kernel_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f'interpolation_kernel={size!r}: the Gaussian kernel size must '
                         'be an odd int >= 1 (e.g. 3, 5, 7)')
    return size


# -- sampling ---------------------------------------------------------------------------

class SeededGenerators:
    """One generator per device, each seeded with ``seed`` when first asked for: noise
    is drawn on the device of the tensor it perturbs (a CPU generator cannot draw on
    CUDA, and drawing on the CPU to copy would cost a transfer per block)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._generators = {}

    def on(self, device) -> torch.Generator:
        device = torch.device(device)
        if device.type == 'cuda' and device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]


def logistic_noise(shape, generator, device, dtype) -> Tensor:
    """g1 - g2 for two independent Gumbel(0, 1) variables (a logistic variable):
    log(u) - log(1 - u) for u uniform in (0, 1), drawn on ``device`` (``generator``: a
    :class:`SeededGenerators`, a generator of that device, or None)."""
    if isinstance(generator, SeededGenerators):
        generator = generator.on(device)
    uniform = torch.rand(shape, generator=generator, dtype=torch.float32, device=device)
    return torch.logit(uniform, eps=1e-8).to(dtype)


def sample_mask(logits: Tensor, variant: str, tau: float, training: bool,
                generator=None):
    """``(hard, value, soft)`` for mask-head ``logits`` ``[B, 1, H, W]``.

    ``hard``: the support in {0, 1} (which pixels are computed); ``value``: what the
    computed features are multiplied by (``hard`` itself, straight-through in training,
    or the ReLU gate); ``soft``: what the sparsity loss averages.

    * ``stochastic`` (SFSI default): Gumbel-sigmoid, i.e. the two-class Gumbel-softmax
      over (p, 1 - p), p = sigmoid(l):  soft = sigmoid((l + g1 - g2) / tau), hard =
      [soft >= 0.5]; the noise is kept at inference (low tau).
    * ``deterministic``: the same in training; at inference hard = [p >= 0.5].
    * ``relu``: a ReLU gate, value = relu(tanh(l)) (bounded by 1, so a mask head that
      starts at l = 3 leaves the dense features almost unchanged), hard = [value > 0].
    ``soft`` is p = sigmoid(l) for the Gumbel variants (the reference's soft mask) and
    the gate for ``relu``.
    """
    if variant == 'relu':
        gate = torch.relu(torch.tanh(logits))
        return (gate > 0).to(logits.dtype), gate, gate
    soft = torch.sigmoid(logits)
    if variant == 'deterministic' and not training:
        hard = (logits >= 0).to(logits.dtype)
        return hard, hard, soft
    noise = logistic_noise(logits.shape, generator, logits.device, logits.dtype)
    if not training:  # sigmoid(z / tau) >= 0.5 when z >= 0 (tau > 0): two ops, not five
        hard = (logits + noise >= 0).to(logits.dtype)
        return hard, hard, soft
    relaxed = torch.sigmoid((logits + noise) / tau)
    hard = (relaxed >= 0.5).to(logits.dtype)
    hard = hard - relaxed.detach() + relaxed  # straight-through estimator
    return hard, hard, soft


def apply_grid_prior(mask: Tensor, interval: Optional[int]) -> Tensor:
    """The grid prior (SFSI Sec. 3.3): ``mask[..., ::k, ::k] = 1`` (a new tensor; no
    gradient reaches the forced positions)."""
    if interval is None:
        return mask
    out = mask.clone()
    out[:, :, ::interval, ::interval] = 1
    return out


class PixelMaskHead(nn.Module):
    """A 3x3 conv from the block input to one logit per output pixel of the conv it
    serves (``stride`` matched). Held as plain parameters, not an ``nn.Conv2d``, so a
    backbone's "Kaiming for every Conv2d" init keeps the near-dense start (weight 0,
    bias ``init_bias``)."""

    def __init__(self, in_channels: int, stride: int = 1, init_bias: float = 3.0):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.zeros(1, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.full((1,), float(init_bias)))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=1)

    def macs(self, out_pixels: int) -> int:
        return out_pixels * self.weight.shape[1] * 9

    def tap_weights(self) -> Tensor:
        """``[9, C]``: the weights of each of the 9 taps (kernel-row, kernel-col)."""
        return self.weight.detach()[0].permute(1, 2, 0).reshape(9, self.weight.shape[1])


def shifted_tap_sum(taps: Tensor, bias: Tensor) -> Tensor:
    """A 3x3 one-channel conv (padding 1, stride 1) from its per-tap products ``taps``
    ``[B, 9, H, W]`` (tap t of pixel p: the input at p times tap t's weights, summed
    over channels): ``out[y, x] = bias + sum_t taps[t, y + ky - 1, x + kx - 1]``.
    Returns ``[B, 1, H, W]``."""
    batch, _, height, width = taps.shape
    padded = F.pad(taps, (1, 1, 1, 1))
    out = bias.view(1, 1, 1, 1).expand(batch, 1, height, width).contiguous()
    for ky in range(3):
        for kx in range(3):
            t = ky * 3 + kx
            out.add_(padded[:, t:t + 1, ky:ky + height, kx:kx + width])
    return out


def _heads_torch(x: Tensor, weight: Tensor, bias: Tensor, stride: int) -> Tensor:
    """``K`` one-logit 3x3 heads (``weight`` ``[K, 9, C]``, padding 1) on ``x``: at stride
    1 one GEMM of ``x``'s pixel rows (a view when ``x`` is channels-last) with all 9K
    tap columns and shifted sums of the tap maps (oneDNN runs a one-output-channel
    convolution far below peak); strided heads as their convolution (a GEMM at every
    input pixel would compute stride^2 times their products)."""
    heads, _, channels = weight.shape
    if stride != 1:
        kernel = weight.view(heads, 3, 3, channels).permute(0, 3, 1, 2)
        return F.conv2d(x, kernel.contiguous(), bias, stride=stride, padding=1)
    rows = gemm(pixel_rows(x), weight.reshape(heads * 9, channels).t(), None)
    taps = rows.view(x.shape[0], x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)
    return torch.cat([shifted_tap_sum(taps[:, 9 * k:9 * k + 9], bias[k])
                      for k in range(heads)], dim=1)


def _heads_native(x: Tensor, weight: Tensor, bias: Tensor, stride: int) -> Tensor:
    """One pass over ``x`` for all ``K <= 2`` heads of stride 1 or 2
    (mmdyn/ops/native/csrc/mask_heads.cpp); the PyTorch route where the kernels are not
    built, ``x`` is not float32 or the stride is larger."""
    kernels = native_kernels()
    if kernels is None or not CPU_FLOAT32.covers(x.device, x.dtype) or weight.shape[0] > 2 \
            or stride > 2:
        return _heads_torch(x, weight, bias, stride)
    batch, _, height, width = x.shape
    return kernels.mask_head_logits(pixel_rows(x).contiguous(), weight, bias, batch, height,
                                    width, stride)


def _heads_timing_inputs(shape_class):
    """A channels-last map of the class's pixel count (below TIMING_ELEMENTS), 3:2 as
    a detection input."""
    dtype, pixels, channels, stride, heads = shape_class
    pixels = max(16, min(pixels, TIMING_ELEMENTS // channels))
    width = max(4, round(math.sqrt(pixels * 1.5)))
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)
    x = torch.randn(1, channels, max(4, pixels // width), width, generator=generator).to(dtype)
    weight = torch.randn(heads, 9, channels, generator=generator).to(dtype)
    return (x.contiguous(memory_format=torch.channels_last), weight,
            torch.zeros(heads, dtype=dtype), stride)


MASK_HEADS = CHOOSER.register(KernelOp(
    'mask_heads', {'torch': _heads_torch, 'native': _heads_native}, _heads_timing_inputs,
    {'native': CPU_FLOAT32}))


def head_groups(heads) -> list:
    """``[(stride, members, weight [K, 9, C], bias [K])]``: the heads grouped by stride,
    two at most per group (what one native pass computes)."""
    groups = []
    for stride in sorted({h.stride for h in heads}):
        same = [k for k, h in enumerate(heads) if h.stride == stride]
        for first in range(0, len(same), 2):
            members = same[first:first + 2]
            weight = torch.stack([heads[k].tap_weights() for k in members]).contiguous()
            bias = torch.cat([heads[k].bias.detach() for k in members])
            groups.append((stride, members, weight, bias))
    return groups


def mask_head_logits(x: Tensor, heads, groups: Optional[list] = None) -> list:
    """The logits ``[B, 1, H_out, W_out]`` of several :class:`PixelMaskHead` on the same
    input ``x`` (inference: no gradient reaches the heads' weights), the heads of one
    stride computed together (``groups`` from :func:`head_groups`, or built here), by
    the kernel measured fastest for the shape (:data:`MASK_HEADS`)."""
    logits = [None] * len(heads)
    for stride, members, weight, bias in groups or head_groups(heads):
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        shape = (dtype_name(x), row_class(pixels), x.shape[1], stride, len(members))
        impl = CHOOSER.choose('mask_heads', shape, x.device)
        out = MASK_HEADS.candidates[impl](x, weight, bias, stride)
        for k, member in enumerate(members):
            logits[member] = out[:, k:k + 1]
    return logits


# -- interpolation ----------------------------------------------------------------------

def _squared_offsets(size: int, like: Tensor) -> Tensor:
    half = (size - 1) // 2
    return torch.arange(-half, half + 1, device=like.device, dtype=like.dtype) ** 2


def gaussian_kernel_2d(inverse_width: Tensor, size: int) -> Tensor:
    """``[size, size]``: s^2 / (2 pi) * exp(-s^2 / 2 * (dx^2 + dy^2))."""
    d2 = _squared_offsets(size, inverse_width)
    k = inverse_width ** 2
    return k / (2 * math.pi) * torch.exp(-k / 2 * (d2[:, None] + d2[None, :]))


def gaussian_kernel_1d(inverse_width: Tensor, size: int) -> Tensor:
    """``[size]``: the 1-D factor g of the separable kernel (outer(g, g) == G)."""
    d2 = _squared_offsets(size, inverse_width)
    return inverse_width.abs() / math.sqrt(2 * math.pi) * \
        torch.exp(-inverse_width ** 2 / 2 * d2)


def interpolate_dense(features: Tensor, support: Tensor, inverse_width: Tensor,
                      size: int, value: Optional[Tensor] = None, eps: float = 1e-5):
    """Eq. 3 on a dense map (the reference): a ``size x size`` depthwise conv.

    ``support`` is the binary mask M ``[B, 1, H, W]``; ``value`` (default M) multiplies
    the sampled features (the ReLU gate)."""
    value = support if value is None else value
    kernel = gaussian_kernel_2d(inverse_width, size)[None, None]
    channels = features.shape[1]
    sampled = features * value
    numerator = F.conv2d(sampled, kernel.expand(channels, 1, size, size), padding=size // 2,
                         groups=channels)
    denominator = F.conv2d(support, kernel, padding=size // 2) + eps
    return sampled + (1 - support) * numerator / denominator


def separable_blur(x: Tensor, kernel_1d: Tensor) -> Tensor:
    """Depthwise ``G * x`` as a vertical then a horizontal 1-D pass (zero padding).
    One-channel maps (the normaliser ``G * M``) take shifted multiply-adds: torch's
    generic conv would run them through its slow im2col path."""
    size, channels = kernel_1d.shape[0], x.shape[1]
    if channels == 1:
        return _shifted_blur(_shifted_blur(x, kernel_1d, 2), kernel_1d, 3)
    vertical = kernel_1d.view(1, 1, size, 1).expand(channels, 1, size, 1)
    horizontal = kernel_1d.view(1, 1, 1, size).expand(channels, 1, 1, size)
    x = F.conv2d(x, vertical, padding=(size // 2, 0), groups=channels)
    return F.conv2d(x, horizontal, padding=(0, size // 2), groups=channels)


def _shifted_blur(x: Tensor, kernel_1d: Tensor, dim: int) -> Tensor:
    """1-D zero-padded correlation along ``dim`` as ``size`` shifted multiply-adds."""
    half, length = kernel_1d.shape[0] // 2, x.shape[dim]
    out = x * kernel_1d[half]
    for offset in range(1, min(half, length - 1) + 1):
        # out[i] += k[half + o] * x[i + o] and out[i] += k[half - o] * x[i - o]
        out.narrow(dim, 0, length - offset).add_(
            x.narrow(dim, offset, length - offset) * kernel_1d[half + offset])
        out.narrow(dim, offset, length - offset).add_(
            x.narrow(dim, 0, length - offset) * kernel_1d[half - offset])
    return out


def blur_macs(pixels: int, channels: int, size: int) -> int:
    """Multiply-adds of :func:`separable_blur` on ``pixels`` x ``channels``."""
    return 2 * size * pixels * channels


def interpolate_rows(rows: Tensor, index: Tensor, support: Tensor, inverse_width: Tensor,
                     size: int, eps: float = 1e-5, base: Optional[Tensor] = None,
                     out: Optional[Tensor] = None, kernel: Optional[Tensor] = None) -> Tensor:
    """Eq. 3 from the sampled rows only: ``rows`` ``[n, C]`` are the (already gated)
    features of the pixels ``index`` (flat ids into ``[B * H * W]``, ascending, as
    :func:`sampled_pixels` gives them) of the binary ``support`` ``[B, 1, H, W]``.
    Scatter, blur separably, normalise, and put the sampled rows back. Returns a dense channels-last ``[B, C, H, W]`` map, plus
    ``base`` (a dense channels-last map, e.g. the residual) when given: the addition
    is fused into the normalisation. Without ``base`` the result is written into
    ``out`` when given (a channels-last map, e.g. from :func:`map_with_zero_row`).

    ``kernel``: :func:`gaussian_kernel_1d` of ``inverse_width`` when the caller keeps
    it (a block at inference), else computed here.

    Without ``base``, float32 rows without gradient take the native one-pass kernel
    when it is built (:mod:`mmdyn.ops.native`; the same values to float rounding)."""
    batch, _, height, width = support.shape
    channels = rows.shape[1]
    if kernel is None:
        kernel = gaussian_kernel_1d(inverse_width.detach(), size)
    kernels = native_kernels() if base is None and CPU_FLOAT32.covers(rows.device, rows.dtype) \
        and not (rows.requires_grad and torch.is_grad_enabled()) \
        else None
    if kernels is not None:
        if out is None:
            out = rows.new_empty(batch, height, width, channels).permute(0, 3, 1, 2)
        kernels.interpolate_sampled_rows(rows.detach().contiguous(), index.contiguous(),
                                         kernel.float().contiguous(), eps,
                                         pixel_rows_view(out), batch, height, width)
        return out
    # Each pixel's row, or rows.shape[0] (unsampled: the zero row appended below).
    lookup = torch.full((batch * height * width,), rows.shape[0], dtype=torch.long,
                        device=rows.device)
    lookup[index] = torch.arange(rows.shape[0], device=rows.device)
    # The zero-filled map of the sampled rows in one gather pass.
    canvas = F.embedding(lookup, with_zero_row(rows))
    canvas = canvas.view(batch, height, width, channels).permute(0, 3, 1, 2)
    numerator = separable_blur(canvas, kernel)
    denominator = separable_blur(support, kernel).add_(eps)
    if base is None and out is not None:
        torch.div(numerator, denominator, out=out)
    elif base is None:
        out = numerator.contiguous(memory_format=torch.channels_last).div_(denominator)
    else:
        out = torch.addcdiv(base, numerator, denominator)
        out = out.contiguous(memory_format=torch.channels_last)
        rows = rows + pixel_rows_view(base).index_select(0, index)
    pixel_rows_view(out).index_copy_(0, index, rows)
    return out


def pixel_rows_view(x: Tensor) -> Tensor:
    """The ``[B * H * W, C]`` view of a channels-last map (no copy)."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError('pixel_rows_view needs a channels-last map')
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


# -- row gathers ------------------------------------------------------------------------

def sampled_pixels(mask: Tensor) -> Tensor:
    """Flat ids ``[n]`` (into ``[B * H * W]``, sorted) of the pixels where ``mask``
    ``[B, 1, H, W]`` is on."""
    return torch.nonzero(mask.detach().reshape(-1) > 0.5).view(-1)


def map_with_zero_row(batch: int, channels: int, height: int, width: int,
                      like: Tensor):
    """``(map, table)``: an uninitialised channels-last ``[B, C, H, W]`` map and the
    ``[B * H * W + 1, C]`` pixel table it is a view of, whose last row is zero (what
    :func:`with_zero_row` appends): a conv that gathers tap rows from the map reads
    the table without copying it."""
    table = like.new_empty(batch * height * width + 1, channels)
    table[-1].zero_()
    return table[:-1].view(batch, height, width, channels).permute(0, 3, 1, 2), table


def with_zero_row(rows: Tensor) -> Tensor:
    """``rows`` with one zero row appended (the value of taps outside the map)."""
    return torch.cat([rows, rows.new_zeros(1, rows.shape[1])])


def conv_tap_rows(index: Tensor, out_hw, in_hw, stride: int, dilation: int,
                  padding: int, zero_row: int, kernel: int = 3) -> Tensor:
    """``[n, kernel^2]`` input rows read by a conv at the output pixels ``index`` (flat
    ids on the ``out_hw`` map); taps outside the input read ``zero_row`` (``B * H_in *
    W_in``: the row :func:`with_zero_row` appends). Kernel-row, kernel-col order. The
    native kernel computes them in one pass when it is built."""
    (out_h, out_w), (in_h, in_w) = out_hw, in_hw
    kernels = native_kernels() if index.device.type == 'cpu' else None
    if kernels is not None:
        return kernels.conv_tap_rows(index.contiguous(), out_h, out_w, in_h, in_w, stride,
                                     dilation, padding, zero_row, kernel)
    batch = index // (out_h * out_w)
    y, x = (index // out_w) % out_h, index % out_w
    offsets = torch.arange(kernel, device=index.device) * dilation - padding
    ys = (y * stride)[:, None] + offsets
    xs = (x * stride)[:, None] + offsets
    inside = ((ys >= 0) & (ys < in_h))[:, :, None] & ((xs >= 0) & (xs < in_w))[:, None, :]
    flat = (batch[:, None, None] * in_h + ys.clamp(0, in_h - 1)[:, :, None]) * in_w \
        + xs.clamp(0, in_w - 1)[:, None, :]
    return torch.where(inside, flat, torch.full_like(flat, zero_row)).view(-1, kernel * kernel)


def conv_matrix(weight: Tensor, groups: int = 1) -> Tensor:
    """The conv ``weight`` ``[C_out, C_in / g, k, k]`` as ``[g, k * k * C_in / g,
    C_out / g]`` matrices for tap rows in (kernel-row, kernel-col, channel) order."""
    out_channels, in_per_group, kh, kw = weight.shape
    per_group = weight.view(groups, out_channels // groups, in_per_group, kh, kw)
    return per_group.permute(0, 3, 4, 2, 1).reshape(groups, kh * kw * in_per_group,
                                                     out_channels // groups).contiguous()


def conv_rows(table: Tensor, taps: Tensor, matrix: Tensor, bias: Optional[Tensor],
              relu: bool = False) -> Tensor:
    """A conv on gathered tap rows: ``table`` ``[N + 1, C]`` (zero row last), ``taps``
    ``[n, T]`` from :func:`conv_tap_rows`, ``matrix`` from :func:`conv_matrix`.
    Returns ``[n, C_out]`` (ReLU'd if ``relu``). One group:
    :func:`~mmdyn.ops.gemm.gather_gemm` (the gather fused into the product where that
    measures faster)."""
    if matrix.shape[0] == 1 and not (torch.is_grad_enabled() and table.requires_grad):
        return gather_gemm(table, taps, matrix[0], bias, relu)
    gathered = F.embedding(taps.reshape(-1), table)            # one row gather
    out = grouped_matmul(gathered.view(taps.shape[0], taps.shape[1], table.shape[1]), matrix,
                         bias)
    return out.relu_() if relu else out


def grouped_matmul(gathered: Tensor, matrix: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``gathered`` ``[n, T, C]`` (taps, channels) times the grouped ``matrix``."""
    n, taps, channels = gathered.shape
    groups = matrix.shape[0]
    if groups == 1:
        flat = gathered.reshape(n, taps * channels)
        if bias is None:
            return flat @ matrix[0]
        return gemm(flat, matrix[0], bias)
    per_group = gathered.view(n, taps, groups, channels // groups).permute(2, 0, 1, 3)
    out = torch.bmm(per_group.reshape(groups, n, -1), matrix)  # [g, n, C_out / g]
    out = out.permute(1, 0, 2).reshape(n, -1)
    return out if bias is None else out.add_(bias)


def bilinear_tap_rows(table: Tensor, ys: Tensor, xs: Tensor, batch: Tensor,
                      height: int, width: int) -> Tensor:
    """Bilinear samples ``[n, T, C]`` of the ``[B * H * W + 1, C]`` pixel ``table``
    (zero row last) at fractional positions ``ys``/``xs`` ``[n, T]`` of sample
    ``batch`` ``[n]``; corners outside the map read zero (mmcv's deformable-conv
    convention: a point at or beyond -1 / H is entirely zero)."""
    zero_row = table.shape[0] - 1
    y0, x0 = torch.floor(ys), torch.floor(xs)
    wy1, wx1 = ys - y0, xs - x0
    y0, x0 = y0.long(), x0.long()
    out = None
    for dy, wy in ((0, 1 - wy1), (1, wy1)):
        for dx, wx in ((0, 1 - wx1), (1, wx1)):
            cy, cx = y0 + dy, x0 + dx
            inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
            rows = (batch[:, None] * height + cy.clamp(0, height - 1)) * width \
                + cx.clamp(0, width - 1)
            rows = torch.where(inside, rows, torch.full_like(rows, zero_row))
            term = F.embedding(rows, table) * (wy * wx).unsqueeze(-1)
            out = term if out is None else out.add_(term)
    return out
