"""Pieces of mmdet's ResNet that the dynamic backbones rebuild: the shortcut
projection, mmseg's contracted dilation, and the FLOPs of a plain (static) block."""
from typing import Tuple

from mmcv.cnn import build_conv_layer, build_norm_layer
from torch import nn

from mmdyn.ops import conv_macs
from .dynamic import DynamicBackboneMixin


def build_shortcut(inplanes: int, out_channels: int, stride: int, avg_down: bool,
                   conv_cfg, norm_cfg):
    """mmdet's ResLayer shortcut (1x1 conv + norm, or avg-pool + 1x1 conv + norm with
    ``avg_down``); None when the identity fits."""
    if stride == 1 and inplanes == out_channels:
        return None
    layers = []
    if avg_down:  # also for stride 1 (an identity pool), to keep mmdet's parameter names
        layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
    layers += [build_conv_layer(conv_cfg, inplanes, out_channels, kernel_size=1,
                                stride=1 if avg_down else stride, bias=False),
               build_norm_layer(norm_cfg, out_channels)[1]]
    return nn.Sequential(*layers)


def first_block_dilation(dilation: int, contract_dilation: bool) -> int:
    """mmseg ResNetV1c: with ``contract_dilation`` a dilated stage's first block uses
    half the dilation."""
    return dilation // 2 if contract_dilation and dilation > 1 else dilation


def reject_unsupported(backbone: str, multi_grid=None, **kwargs):
    """Clear build-time errors for mmdet/mmseg ResNet options the dynamic executors do
    not cover."""
    if multi_grid is not None:
        raise ValueError(f'multi_grid is not supported by {backbone}')
    for name in ('dcn', 'plugins'):
        if kwargs.get(name) is not None:
            raise ValueError(f'{backbone} does not support {name}')
    if kwargs.get('with_cp'):
        raise ValueError(f'{backbone} does not support with_cp=True')


def run_resnet_stem(backbone, x):
    """The stem of an mmdet/mmseg ResNet (deep or not), before the max-pool."""
    if backbone.deep_stem:
        return backbone.stem(x)
    return backbone.relu(backbone.norm1(backbone.conv1(x)))


def plain_res_layer(block, inplanes: int, planes: int, num_blocks: int, stride: int,
                    dilation: int, avg_down: bool, contract_dilation: bool, conv_cfg=None,
                    norm_cfg=dict(type='BN'), **kwargs) -> nn.Sequential:
    """A static ResNet stage as mmdet's ResLayer builds it, with mmseg's contracted
    dilation for the first block."""
    out_channels = planes * block.expansion
    first = block(inplanes=inplanes, planes=planes, stride=stride,
                  dilation=first_block_dilation(dilation, contract_dilation),
                  downsample=build_shortcut(inplanes, out_channels, stride, avg_down,
                                            conv_cfg, norm_cfg),
                  conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs)
    rest = [block(inplanes=out_channels, planes=planes, dilation=dilation,
                  conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs)
            for _ in range(num_blocks - 1)]
    return nn.Sequential(first, *rest)


def conv_output_size(size: Tuple[int, int], layer) -> Tuple[int, int]:
    """Output size of a conv (or a max-pool, which has the same arithmetic)."""
    def two(value):
        return value if isinstance(value, (tuple, list)) else (value, value)
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
        size, two(layer.padding), two(layer.dilation), two(layer.kernel_size),
        two(layer.stride)))


def conv_flops(conv: nn.Conv2d, out_size: Tuple[int, int]) -> int:
    return out_size[0] * out_size[1] * conv_macs(
        conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.groups)


def plain_block_flops(block, size: Tuple[int, int]):
    """Per-sample FLOPs (MACs) of an mmdet ``BasicBlock``/``Bottleneck`` for an input
    of ``size`` and the block's output size."""
    flops = 0
    for name in ('conv1', 'conv2', 'conv3'):
        conv = getattr(block, name, None)
        if conv is not None:
            size = conv_output_size(size, conv)
            flops += conv_flops(conv, size)
    if block.downsample is not None:
        # The shortcut (strided 1x1 conv, or avg-pool + 1x1 conv) lands on the output grid.
        flops += sum(conv_flops(m, size) for m in block.downsample if isinstance(m, nn.Conv2d))
    return flops, size


class DynamicResNetMixin(DynamicBackboneMixin):
    """What a dynamic subclass of mmdet's ``ResNet`` shares: the stem with its FLOPs,
    the controls set at build time, and a ``train()`` that returns ``self``."""

    def finish_dynamic_init(self, execution_mode: str, temperature: float):
        """Call at the end of ``__init__``, after ``ResNet.__init__``."""
        stem_convs = [m for m in (self.stem if self.deep_stem else [self.conv1])
                      if isinstance(m, nn.Conv2d)]
        self._stem_macs_per_pixel = sum(
            conv_macs(c.in_channels, c.out_channels, c.kernel_size[0], c.groups)
            for c in stem_convs)
        self.set_execution_mode(execution_mode)
        self.set_temperature(temperature)
        for block in self.dynamic_blocks():
            # forward() never reads a dynamic block's input again (a stage output kept
            # for out_indices feeds a static block or a shortcut projection), so the
            # blocks may overwrite it at inference.
            block.owns_input = True

    def train(self, mode: bool = True):
        """mmdet's ResNet.train() returns None; keep nn.Module's ``return self``."""
        super().train(mode)
        return self

    def stem_forward(self, x):
        """The stem and max-pool; returns the map and the stem's per-sample FLOPs."""
        x = run_resnet_stem(self, x)
        flops = x.shape[2] * x.shape[3] * self._stem_macs_per_pixel
        return self.maxpool(x), flops
