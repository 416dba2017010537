"""Convolutions whose attributes change per forward while the weights stay the same.

"The Untapped Potential of Off-the-Shelf Convolutional Neural Networks" (2021): a
trained 3x3 convolution is run, at inference, with another stride, dilation or kernel
size. An option is a :class:`ConvOption` ``(stride, dilation, kernel_size)``:

- stride from {1/2, 1, 2, 3, 4}. Integer strides are plain strided convolutions. The
  fractional stride 1/2 is a transposed convolution with stride 2 whose kernel is the
  trained one flipped spatially with its in/out channel axes swapped (the paper's
  appendix): at stride 1 that transposed convolution equals the trained conv, so stride
  1/2 is "the trained conv on the 2x zero-upsampled input".
- dilation from {1, ..., 5}.
- kernel size from {1, 3, 5, 7, 9}: the 3x3 kernel resized bilinearly to k x k
  (``align_corners=False``: k = 1 takes the centre tap) and multiplied by (3/k)^2, so the
  output keeps the magnitude of the trained conv (a k x k kernel sums (k/3)^2 times as
  many taps). The bias, if any, is not rescaled.

Padding is always ``dilation * (k - 1) / 2`` (the default geometry: "same" padding), so
the output of an ``H x W`` input is ``ceil(H / s) x ceil(W / s)`` for integer strides
and ``2H x 2W`` for stride 1/2 (transposed conv with ``output_padding=1``). The default
option (the trained conv's own stride and dilation, k = 3) runs exactly ``F.conv2d``
with the trained arguments.

Multiply-adds (MACs) are counted as the products actually needed: ``out_pixels * C_in *
C_out * k^2 / groups`` for integer strides, ``in_pixels * C_in * C_out * k^2 / groups``
for stride 1/2 (each input pixel meets each tap once; the zero-upsampled view would
count four times as many, three quarters of them with zeros).
"""
from dataclasses import dataclass
from fractions import Fraction
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flops import conv_macs

HALF = Fraction(1, 2)
#: the allowed values of each attribute
STRIDES = (HALF, 1, 2, 3, 4)
DILATIONS = (1, 2, 3, 4, 5)
KERNEL_SIZES = (1, 3, 5, 7, 9)
ATTRIBUTES = ('stride', 'dilation', 'kernel_size')


def parse_stride(value, where: str = 'stride'):
    """1/2 (as ``0.5``, ``'1/2'`` or ``Fraction(1, 2)``) or an int in {1, 2, 3, 4}."""
    try:
        stride = Fraction(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, ZeroDivisionError):
        stride = None
    if stride not in STRIDES:
        raise ValueError(f'{where}={value!r} is not an allowed stride; choose one of '
                         '(1/2, 1, 2, 3, 4)')
    return HALF if stride == HALF else int(stride)


def _check_int(value, allowed, where):
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ValueError(f'{where}={value!r} is not allowed; choose one of {allowed}')
    return value


@dataclass(frozen=True)
class ConvOption:
    """One attribute setting of a dynamic conv: ``stride`` (1/2 or an int),
    ``dilation``, ``kernel_size``. Validated on construction."""
    stride: object = 1
    dilation: int = 1
    kernel_size: int = 3

    def __post_init__(self):
        object.__setattr__(self, 'stride', parse_stride(self.stride))
        _check_int(self.dilation, DILATIONS, 'dilation')
        _check_int(self.kernel_size, KERNEL_SIZES, 'kernel_size')

    @property
    def upsamples(self) -> bool:
        return self.stride == HALF

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel_size - 1) // 2

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Output ``(H, W)`` for an input of ``size``."""
        if self.upsamples:
            return tuple(2 * n for n in size)
        return tuple((n - 1) // self.stride + 1 for n in size)

    def __str__(self):
        stride = '1/2' if self.upsamples else str(self.stride)
        return f's{stride}-d{self.dilation}-k{self.kernel_size}'


def as_option(value, where: str = 'option') -> ConvOption:
    """A :class:`ConvOption` from itself, a dict or a ``(stride, dilation, k)`` tuple."""
    if isinstance(value, ConvOption):
        return value
    try:
        if isinstance(value, dict):
            unknown = set(value) - set(ATTRIBUTES)
            if unknown:
                raise ValueError(f'unknown attributes {sorted(unknown)}; allowed: {ATTRIBUTES}')
            return ConvOption(**value)
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return ConvOption(*value)
    except ValueError as error:
        raise ValueError(f'{where}: {error}') from None
    raise ValueError(f'{where}={value!r}: expected a ConvOption, a dict with keys '
                     f'{ATTRIBUTES} or a (stride, dilation, kernel_size) tuple')


def resize_kernel(weight: Tensor, kernel_size: int) -> Tensor:
    """The kernel bilinearly resized to ``kernel_size`` and scaled by (k0/k)^2 (k0 = the
    trained size), which keeps the output magnitude."""
    base = weight.shape[-1]
    if kernel_size == base:
        return weight
    resized = F.interpolate(weight, size=(kernel_size, kernel_size), mode='bilinear',
                            align_corners=False)
    return resized * (base / kernel_size) ** 2


def transposed_weight(weight: Tensor, groups: int = 1) -> Tensor:
    """``[C_out, C_in/g, k, k]`` conv weight -> ``[C_in, C_out/g, k, k]`` transposed-conv
    weight: in/out channel axes swapped within each group, kernel flipped spatially."""
    c_out, c_in_group, kh, kw = weight.shape
    grouped = weight.reshape(groups, c_out // groups, c_in_group, kh, kw)
    swapped = grouped.transpose(1, 2).reshape(groups * c_in_group, c_out // groups, kh, kw)
    return swapped.flip(-2, -1)


def attribute_conv2d(x: Tensor, weight: Tensor, bias, option: ConvOption,
                     groups: int = 1) -> Tensor:
    """Run the trained ``weight`` (odd square kernel) with ``option``."""
    weight = resize_kernel(weight, option.kernel_size)
    if option.upsamples:
        return F.conv_transpose2d(x, transposed_weight(weight, groups), bias, stride=2,
                                  padding=option.padding, output_padding=1, groups=groups,
                                  dilation=option.dilation)
    return F.conv2d(x, weight, bias, stride=option.stride, padding=option.padding,
                    dilation=option.dilation, groups=groups)


class DynamicAttributeConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and names, so trained state dicts load) whose
    stride / dilation / kernel size are chosen per forward.

    ``forward(x)`` uses :attr:`option` (``None``: the default option, the conv's own
    stride and dilation with its 3x3 kernel, i.e. exactly ``nn.Conv2d.forward``);
    ``forward(x, option)`` uses ``option`` for this call only. ``allow_upsampling``:
    whether stride 1/2 may be asked for.
    """

    def __init__(self, *args, allow_upsampling: bool = True, name: str = 'conv', **kwargs):
        super().__init__(*args, **kwargs)
        k = self.kernel_size[0]
        if self.kernel_size != (3, 3):
            raise ValueError(f'{name}: DynamicAttributeConv2d wraps a 3x3 conv, got '
                             f'kernel_size={self.kernel_size}')
        for attr in ('stride', 'dilation'):
            value = getattr(self, attr)
            if value[0] != value[1]:
                raise ValueError(f'{name}: {attr}={value} must be square')
        if self.padding != (self.dilation[0] * (k - 1) // 2,) * 2 or self.padding_mode != 'zeros':
            raise ValueError(f'{name}: padding={self.padding} must be dilation * (k - 1) / 2 '
                             "with padding_mode='zeros' (the default geometry)")
        self.default_option = ConvOption(self.stride[0], self.dilation[0], k)
        self.allow_upsampling = bool(allow_upsampling)
        self.name = name
        self.option = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> 'DynamicAttributeConv2d':
        """A dynamic conv with the arguments and (shared) parameters of ``conv``."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, **kwargs)
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def check_option(self, option) -> ConvOption:
        option = self.default_option if option is None else as_option(option, self.name)
        if option.upsamples and not self.allow_upsampling:
            raise ValueError(f'{self.name}: stride 1/2 (upsampling) is not allowed at this '
                             'position')
        return option

    def set_option(self, option):
        self.option = None if option is None else self.check_option(option)

    def forward(self, x: Tensor, option=None) -> Tensor:
        option = self.check_option(self.option if option is None else option)
        if option == self.default_option:
            return super().forward(x)
        return attribute_conv2d(x, self.weight, self.bias, option, self.groups)

    def macs(self, in_size: Tuple[int, int], option=None) -> int:
        """Per-sample multiply-adds for an input of ``in_size`` (see the module doc)."""
        option = self.check_option(option)
        per_position = conv_macs(self.in_channels, self.out_channels, option.kernel_size,
                                 self.groups)
        size = in_size if option.upsamples else option.output_size(in_size)
        return size[0] * size[1] * per_position
