"""BatchNorm folding for the sparse executors.

At inference a conv followed by BatchNorm is one affine conv:
    w' = w * gamma / sqrt(var + eps),   b' = (b - mean) * gamma / sqrt(var + eps) + beta.

The products run in the dtype of the activations they meet (bf16 under CPU autocast,
whose casts do not reach in-place ops such as ``addmm_``): :meth:`FoldedConv.cast`.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense_conv import dense_conv
from .gemm import gemm, gemm_acc, scatter_gemm_acc
from .patches import pixel_rows


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with BatchNorm folded in, run on dense maps or on patch stacks."""
    weight: Tensor
    bias: Tensor
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    groups: int = 1
    matrix: Tensor = field(init=False, repr=False)
    #: the weight in channels-last order, for channels-last inputs (oneDNN would
    #: otherwise reorder a plain weight on every call)
    weight_channels_last: Tensor = field(init=False, repr=False)
    _casts: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self):
        # [kh * kw * C_in, C_out]: the conv as a product with channels-last pixel rows.
        out_channels = self.weight.shape[0]
        object.__setattr__(self, 'matrix', self.weight.permute(0, 2, 3, 1)
                           .reshape(out_channels, -1).t().contiguous())
        object.__setattr__(self, 'weight_channels_last',
                           self.weight.contiguous(memory_format=torch.channels_last))

    def __call__(self, x: Tensor, valid: bool = False, relu: bool = False) -> Tensor:
        """Run densely (``valid=False``, the conv's own padding) or on windows that
        already carry their halo (``valid=True``: no padding, VALID convolution); then
        ReLU if ``relu`` (fused where the kernel can).

        On channels-last maps a 1x1 unstrided conv, and on channels-last stacks a window
        that is exactly one receptive field (S = 1), is a single matrix product (its
        kernel measured, :func:`~mmdyn.ops.gemm.gemm`), much faster than a batched conv.
        Other convs on whole channels-last maps take the kernel measured fastest for
        them (:func:`~mmdyn.ops.dense_conv.dense_conv`: a prepacked weight or not).
        """
        if x.dtype != self.weight.dtype:
            return self.cast(x.dtype)(x, valid, relu)
        kernel = self.weight.shape[-1]
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        # a 1x1 unstrided conv has no padding: dense or valid, the same product
        if self.groups == 1 and channels_last and (
                (kernel == 1 and self.stride == 1 and (valid or self.padding == 0))
                or (valid and self.dilation == 1 and x.shape[-2:] == (kernel, kernel))):
            out = self._as_matmul(x, kernel)
            return out.relu_() if relu else out
        if channels_last and not valid:
            return dense_conv(x, self.weight_channels_last, self.bias, self.stride,
                              self.padding, self.dilation, self.groups, relu)
        out = F.conv2d(x, self.weight_channels_last if channels_last else self.weight,
                       self.bias, stride=self.stride, padding=0 if valid else self.padding,
                       dilation=self.dilation, groups=self.groups)
        return out.relu_() if relu else out

    def _as_matmul(self, x: Tensor, kernel: int) -> Tensor:
        batch, _, height, width = x.shape
        if kernel == 1:
            rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        else:
            height = width = 1
            rows = x.permute(0, 2, 3, 1).reshape(batch, -1)
        out = gemm(rows, self.matrix, self.bias)
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)

    def cast(self, dtype) -> 'FoldedConv':
        """This conv with its weights in ``dtype`` (cached; ``self`` when they already
        are): folded fp32 weights meeting bf16 activations under autocast."""
        if dtype == self.weight.dtype:
            return self
        if dtype not in self._casts:
            self._casts[dtype] = FoldedConv(self.weight.to(dtype), self.bias.to(dtype),
                                            self.stride, self.dilation, self.padding,
                                            self.groups)
        return self._casts[dtype]

    def rows(self, rows: Tensor) -> Tensor:
        """A 1x1 conv on pixel rows ``[N, C_in]`` -> ``[N, C_out]``, in their dtype."""
        folded = self.cast(rows.dtype)
        return gemm(rows, folded.matrix, folded.bias)

    def accumulate_(self, out: Tensor, rows: Tensor, relu: bool = False) -> Tensor:
        """``out += conv(rows)`` in place for a 1x1 conv on pixel rows (then ReLU if
        ``relu``), in ``out``'s dtype (in-place ops are not autocast)."""
        folded = self.cast(out.dtype)
        return gemm_acc(out, rows, folded.matrix, folded.bias, relu)

    def accumulate_map_(self, out: Tensor, x: Tensor, relu: bool = False) -> Tensor:
        """``out += conv(x)`` on whole maps (then ReLU if ``relu``); returns the sum,
        ``out`` itself where it can: a 1x1 unstrided conv on channels-last maps of one
        dtype adds its product onto ``out`` in place (:meth:`accumulate_`: no
        temporary map, the sum and ReLU fused); any other conv adds ``out`` onto its
        output map."""
        if (self.weight.shape[-1] == 1 and self.stride == 1 and self.groups == 1
                and out.dtype == x.dtype and out.shape[0] == x.shape[0]
                and out.shape[1] == self.out_channels and out.shape[2:] == x.shape[2:]
                and x.is_contiguous(memory_format=torch.channels_last)
                and out.is_contiguous(memory_format=torch.channels_last)):
            self.accumulate_(pixel_rows(out), pixel_rows(x), relu)
            return out
        total = self(x).add_(out)
        return total.relu_() if relu else total

    def scatter_accumulate_(self, dest: Tensor, source: Tensor, pixels: Tensor, rows: Tensor,
                            relu: bool = False, buffers=None) -> Tensor:
        """``dest[pixels] = source[pixels] + conv(rows)`` for a 1x1 conv on pixel rows
        (then ReLU if ``relu``), in ``dest``'s dtype: see
        :func:`~mmdyn.ops.gemm.scatter_gemm_acc`."""
        folded = self.cast(dest.dtype)
        return scatter_gemm_acc(dest, source, pixels, rows, folded.matrix, folded.bias, relu,
                                buffers)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]


def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.modules.batchnorm._BatchNorm]) -> FoldedConv:
    """Fold ``bn`` (eval statistics) into ``conv``; ``bn=None`` keeps the conv as is.
    The fold is computed in float32 and returned in the conv's dtype (bf16 weights
    lose nothing more than their own rounding)."""
    dtype = conv.weight.dtype
    weight = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None \
        else weight.new_zeros(weight.shape[0])
    if bn is not None:
        scale = bn.weight.detach().float() * (bn.running_var.float() + bn.eps).rsqrt()
        bias = (bias - bn.running_mean.float()) * scale + bn.bias.detach().float()
        weight = weight * scale.view(-1, 1, 1, 1)
    weight, bias = weight.to(dtype).contiguous(), bias.to(dtype).contiguous()
    return FoldedConv(weight, bias, _single(conv.stride),
                      _single(conv.dilation), _single(conv.padding), conv.groups)


def _single(value) -> int:
    """Square kernels only: (k, k) -> k; anything else is rejected clearly."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f'sparse executors support square settings only, got {value}')
        return int(value[0])
    return int(value)
