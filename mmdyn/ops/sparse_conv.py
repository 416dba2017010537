"""BatchNorm folding for the sparse executors.

At inference a conv followed by BatchNorm is one affine conv:
    w' = w * gamma / sqrt(var + eps),   b' = (b - mean) * gamma / sqrt(var + eps) + beta.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gemm import gemm


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with BatchNorm folded in, run on dense maps or on patch stacks."""
    weight: Tensor
    bias: Tensor
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    matrix: Tensor = field(init=False, repr=False)

    def __post_init__(self):
        # [kh * kw * C_in, C_out]: the conv as a product with channels-last pixel rows.
        out_channels = self.weight.shape[0]
        object.__setattr__(self, 'matrix', self.weight.permute(0, 2, 3, 1)
                           .reshape(out_channels, -1).t().contiguous())

    def __call__(self, x: Tensor, valid: bool = False) -> Tensor:
        """Run densely (``valid=False``, the conv's own padding) or on windows that
        already carry their halo (``valid=True``: no padding, VALID convolution).

        On channels-last stacks a 1x1 conv, or a window that is exactly one receptive
        field (S = 1), is a single matrix product, much faster than a batched conv.
        """
        kernel = self.weight.shape[-1]
        if valid and x.is_contiguous(memory_format=torch.channels_last) and (
                (kernel == 1 and self.stride == 1)
                or (self.dilation == 1 and x.shape[-2:] == (kernel, kernel))):
            return self._as_matmul(x, kernel)
        return F.conv2d(x, self.weight, self.bias, stride=self.stride,
                        padding=0 if valid else self.padding, dilation=self.dilation)

    def _as_matmul(self, x: Tensor, kernel: int) -> Tensor:
        batch, _, height, width = x.shape
        if kernel == 1:
            rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        else:
            height = width = 1
            rows = x.permute(0, 2, 3, 1).reshape(batch, -1)
        out = gemm(rows, self.matrix, self.bias)
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]


def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.modules.batchnorm._BatchNorm]) -> FoldedConv:
    """Fold ``bn`` (eval statistics) into ``conv``; ``bn=None`` keeps the conv as is."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if bn is not None:
        scale = bn.weight.detach() * (bn.running_var + bn.eps).rsqrt()
        bias = (bias - bn.running_mean) * scale + bn.bias.detach()
        weight = weight * scale.view(-1, 1, 1, 1)
    return FoldedConv(weight.contiguous(), bias.contiguous(), _single(conv.stride),
                      _single(conv.dilation), _single(conv.padding))


def _single(value) -> int:
    """Square kernels only: (k, k) -> k; anything else is rejected clearly."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f'sparse executors support square settings only, got {value}')
        return int(value[0])
    return int(value)
