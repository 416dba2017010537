"""BatchNorm folding for the sparse executors.

At inference a conv followed by BatchNorm is one affine conv:
    w' = w * gamma / sqrt(var + eps),   b' = (b - mean) * gamma / sqrt(var + eps) + beta.
"""
from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with BatchNorm folded in, run on dense maps or on patch stacks."""
    weight: Tensor
    bias: Tensor
    stride: int = 1
    dilation: int = 1
    padding: int = 0

    def __call__(self, x: Tensor, valid: bool = False) -> Tensor:
        """Run densely (``valid=False``, the conv's own padding) or on windows that
        already carry their halo (``valid=True``: no padding, VALID convolution)."""
        return F.conv2d(x, self.weight, self.bias, stride=self.stride,
                        padding=0 if valid else self.padding, dilation=self.dilation)

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
