"""ITD-ResNet: inference-time-dynamic convolution attributes on a trained ResNet.

"The Untapped Potential of Off-the-Shelf Convolutional Neural Networks" (2021). The
network and its weights are mmdet's ``ResNet`` / ``ResNeXt`` (so dense checkpoints load
unchanged); the strided 3x3 conv of the first block of each stage (positions A, B, C, D
= ``layer1.0`` ... ``layer4.0``; ``conv2`` of a Bottleneck, ``conv1`` of a BasicBlock)
becomes a :class:`~mmdyn.ops.DynamicAttributeConv2d` whose stride, dilation and kernel
size are chosen per forward. An *option permutation* is one
:class:`~mmdyn.ops.ConvOption` per dynamic position:

- per forward / batch: ``set_permutation(...)`` (or a hook calling it),
- per sample: ``set_sample_permutations([...])`` (one permutation per sample; samples
  that share a permutation run together, one forward per distinct permutation).

The shortcut of a dynamic block follows the chosen stride (Sec. 3.1): the block input is
sampled on the output grid (``x[..., ::s, ::s]``, what a strided 1x1 conv reads; an
average pool with ``avg_down``) or nearest-upsampled for stride 1/2, then the shortcut's
1x1 conv and norm run with stride 1, so the residual sum stays valid. With the default
permutation every op is the one of the dense ResNet.

Feature maps follow the actual sizes. ``output_size='nominal'`` resamples every output
to the size the default permutation gives (bilinear when growing, adaptive average
pooling when shrinking both sides) for consumers that assume nominal strides (anchor
generators, RoI extractors); segmentation heads and classifiers take any size.

Per-sample multiply-adds of the permutation used are recorded (DESIGN contract 3): one
:class:`~mmdyn.ops.BlockRecord` per stage whose ``dense_flops`` is the default
permutation's count and ``executed_flops`` the chosen one's; its ``activation_rate`` is
their ratio (the relative cost of the stage, > 1 when a stage runs at a finer grid).
"""
import itertools
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmdet.models.backbones.resnet import BasicBlock, ResNet
from mmdet.models.backbones.resnext import Bottleneck as ResNeXtBottleneck
from mmengine.registry import MODELS
from torch import nn

from mmdyn.ops import BlockRecord, ForwardRecord, MaskTerms, PatchGrid, conv_macs
from mmdyn.ops.attribute_conv import (ATTRIBUTES, ConvOption, DynamicAttributeConv2d,
                                      as_option)
from .resnet_parts import (DynamicResNetMixin, check_resnet_sizes, check_resnext_width,
                           conv_output_size, plain_block_flops, plain_res_layer,
                           reject_unsupported)

POSITIONS = ('A', 'B', 'C', 'D')
OUTPUT_SIZES = ('actual', 'nominal')


def dynamic_conv_name(block) -> str:
    """The strided 3x3 conv of a block: ``conv2`` (Bottleneck), ``conv1`` (BasicBlock)."""
    return 'conv1' if isinstance(block, BasicBlock) else 'conv2'


def _conv_macs_at(conv: nn.Conv2d, size) -> int:
    return size[0] * size[1] * conv_macs(conv.in_channels, conv.out_channels,
                                         conv.kernel_size[0], conv.groups)


class ITDResNetMixin(DynamicResNetMixin):
    """The dynamic positions, permutations, sizes, MACs and forward of ITD-ResNet/ResNeXt
    (put before mmdet's ``ResNet`` in the bases)."""

    def init_itd(self, dynamic_positions, upsampling_positions, output_size, permutation,
                 min_feature_size):
        allowed = POSITIONS[:self.num_stages]
        for name, value in (('dynamic_positions', dynamic_positions),
                            ('upsampling_positions', upsampling_positions)):
            if not isinstance(value, (list, tuple, str)) and value is not None:
                raise ValueError(f'{name}={value!r}: expected a list or tuple of positions '
                                 f'among {allowed}')
        positions = tuple(dynamic_positions)
        if not positions or len(set(positions)) != len(positions) or \
                not set(positions) <= set(allowed):
            raise ValueError(f'dynamic_positions={dynamic_positions!r}: choose distinct '
                             f'positions among {allowed} (first block of each stage)')
        upsampling = tuple(positions if upsampling_positions is None else upsampling_positions)
        if not set(upsampling) <= set(positions):
            raise ValueError(f'upsampling_positions={upsampling_positions!r} must be a subset '
                             f'of dynamic_positions={positions}')
        if output_size not in OUTPUT_SIZES:
            raise ValueError(f'output_size={output_size!r} is not one of {OUTPUT_SIZES}')
        if isinstance(min_feature_size, bool) or not isinstance(min_feature_size, int) \
                or min_feature_size < 1:
            raise ValueError(f'min_feature_size={min_feature_size!r} must be an int >= 1')
        self.dynamic_positions = tuple(sorted(positions))
        self.output_size = output_size
        self.min_feature_size = min_feature_size
        self.position_convs: Dict[str, DynamicAttributeConv2d] = {}
        for position in self.dynamic_positions:
            block = getattr(self, self.res_layers[POSITIONS.index(position)])[0]
            name = dynamic_conv_name(block)
            conv = DynamicAttributeConv2d.from_conv(
                getattr(block, name), allow_upsampling=position in upsampling,
                name=f'position {position} ({self.res_layers[POSITIONS.index(position)]}.0.{name})')
            setattr(block, name, conv)
            self.position_convs[position] = conv
        self.finish_dynamic_init('auto', 1.0)
        self._permutation = self.default_permutation
        self._sample_permutations = None
        if permutation is not None:
            self.set_permutation(**permutation) if isinstance(permutation, dict) \
                else self.set_permutation(permutation)

    # -- permutations -------------------------------------------------------------------

    @property
    def default_permutation(self) -> Tuple[ConvOption, ...]:
        """The trained network's options: its strides and dilations, 3x3 kernels."""
        return tuple(self.position_convs[p].default_option for p in self.dynamic_positions)

    @property
    def permutation(self) -> Tuple[ConvOption, ...]:
        return self._permutation

    def check_permutation(self, permutation) -> Tuple[ConvOption, ...]:
        """Validate one option per dynamic position (``None``: the default)."""
        if permutation is None:
            return self.default_permutation
        if isinstance(permutation, (ConvOption, dict)) or not isinstance(permutation,
                                                                         (list, tuple)):
            raise ValueError(f'a permutation is a sequence of {len(self.dynamic_positions)} '
                             f'options (positions {self.dynamic_positions}); got {permutation!r}')
        if len(permutation) != len(self.dynamic_positions):
            raise ValueError(f'permutation of length {len(permutation)}: expected '
                             f'{len(self.dynamic_positions)} options, one per dynamic '
                             f'position {self.dynamic_positions}')
        return tuple(self.position_convs[p].check_option(as_option(o, f'position {p}'))
                     for p, o in zip(self.dynamic_positions, permutation))

    def permutation_from_values(self, **values) -> Tuple[ConvOption, ...]:
        """``stride=(1, 2, 2, 2)`` (and/or ``dilation=``, ``kernel_size=``): one value per
        dynamic position; attributes not given keep the default."""
        unknown = set(values) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f'unknown attributes {sorted(unknown)}; allowed: {ATTRIBUTES}')
        options = []
        for k, (position, default) in enumerate(zip(self.dynamic_positions,
                                                    self.default_permutation)):
            chosen = dict(stride=default.stride, dilation=default.dilation,
                          kernel_size=default.kernel_size)
            for attribute, per_position in values.items():
                if not isinstance(per_position, (list, tuple)) or \
                        len(per_position) != len(self.dynamic_positions):
                    raise ValueError(
                        f'{attribute}={per_position!r}: expected {len(self.dynamic_positions)} '
                        f'values, one per dynamic position {self.dynamic_positions}')
                chosen[attribute] = per_position[k]
            options.append(as_option(chosen, f'position {position}'))
        return self.check_permutation(options)

    def set_forced_activation(self, rate, seed: int = 0):
        """ITD has no spatial masks to force: its dynamic part is the option
        permutation. ``None`` (the model's own behaviour) is accepted."""
        if rate is not None:
            raise ValueError(f'set_forced_activation({rate!r}): {type(self).__name__} has no '
                             'spatial masks (its dynamic part is the option permutation: '
                             'set_permutation(...)); benchmark it with --rates source')

    def set_permutation(self, permutation=None, **values):
        """Use this permutation for every sample of the next forwards (``None``: the
        default); or give per-attribute values: ``set_permutation(stride=(1, 2, 3, 2))``."""
        if values:
            if permutation is not None:
                raise ValueError('give either a permutation or attribute values, not both')
            self._permutation = self.permutation_from_values(**values)
        else:
            self._permutation = self.check_permutation(permutation)
        self._sample_permutations = None

    def set_sample_permutations(self, permutations: Optional[Sequence]):
        """One permutation per sample of the next forwards (``None``: back to the batch
        permutation). The batch size must match."""
        self._sample_permutations = None if permutations is None else \
            [self.check_permutation(p) for p in permutations]

    def option_choices(self, space: dict, positions=None) -> List[List[ConvOption]]:
        """Per dynamic position, the options of the grid ``space`` (``{attribute:
        values}``, e.g. ``dict(stride=(1, 2, 3, 4), kernel_size=(1, 3))``; attributes
        not given keep their default). Positions not in ``positions`` (default: all)
        keep their default option only; stride 1/2 is left out where upsampling is not
        allowed."""
        if not isinstance(space, dict) or not space or not set(space) <= set(ATTRIBUTES):
            raise ValueError(f'space={space!r}: expected a non-empty dict mapping attributes '
                             f'{ATTRIBUTES} to value lists')
        positions = self.dynamic_positions if positions is None else tuple(positions)
        if not set(positions) <= set(self.dynamic_positions):
            raise ValueError(f'positions={positions!r} must be among the dynamic positions '
                             f'{self.dynamic_positions}')
        names = list(space)
        choices = []
        for position, default in zip(self.dynamic_positions, self.default_permutation):
            if position not in positions:
                choices.append([default])
                continue
            options = []
            for values in itertools.product(*(tuple(space[n]) for n in names)):
                fields = dict(stride=default.stride, dilation=default.dilation,
                              kernel_size=default.kernel_size)
                fields.update(zip(names, values))
                option = as_option(fields, f'position {position}')
                if option.upsamples and not self.position_convs[position].allow_upsampling:
                    continue
                if option not in options:
                    options.append(option)
            choices.append(options)
        return choices

    def permutations(self, space: dict, positions=None,
                     input_size: Optional[Tuple[int, int]] = None):
        """Every permutation of :meth:`option_choices` (those valid for ``input_size``
        if given), the default permutation first when it is among them."""
        space = [tuple(p) for p in itertools.product(*self.option_choices(space, positions))]
        if input_size is not None:
            space = [p for p in space if self.fits(input_size, p)]
        default = self.default_permutation
        return ([default] if default in space else []) + [p for p in space if p != default]

    # -- sizes and multiply-adds ----------------------------------------------------------

    def stem_size(self, size) -> Tuple[int, int]:
        convs = [m for m in (self.stem if self.deep_stem else [self.conv1])
                 if isinstance(m, nn.Conv2d)]
        for conv in convs:
            size = conv_output_size(size, conv)
        return conv_output_size(size, self.maxpool)

    def plan(self, input_size, permutation=None):
        """Per-stage ``(output size, per-sample MACs)`` for an input of ``input_size``
        under ``permutation``; raises if a map would be smaller than
        ``min_feature_size``."""
        options = dict(zip(self.dynamic_positions, self.check_permutation(permutation)))
        stem_out = self.stem_size(tuple(input_size))
        size = stem_out
        stages = []
        for i, layer_name in enumerate(self.res_layers):
            layer = getattr(self, layer_name)
            option = options.get(POSITIONS[i])
            macs = 0
            for k, block in enumerate(layer):
                if k == 0 and option is not None:
                    block_macs, out = self.dynamic_block_macs(block, size, option)
                else:
                    block_macs, out = plain_block_flops(block, size)
                if min(out) < self.min_feature_size:
                    where = f'position {POSITIONS[i]} with option {option}' \
                        if option is not None else f'{layer_name}'
                    raise ValueError(
                        f'{where}: an input of {tuple(input_size)} gives a {out[0]}x{out[1]} '
                        f'feature map in {layer_name}, below min_feature_size='
                        f'{self.min_feature_size}; use a larger input or a smaller stride')
                macs += block_macs
                size = out
            stages.append((size, macs))
        return stem_out, stages

    def fits(self, input_size, permutation) -> bool:
        try:
            self.plan(input_size, permutation)
        except ValueError:
            return False
        return True

    def dynamic_block_macs(self, block, size, option: ConvOption):
        """Per-sample MACs of a dynamic first block under ``option`` and its output size."""
        name = dynamic_conv_name(block)
        dynamic = getattr(block, name)
        macs = 0
        if name == 'conv2':  # Bottleneck: conv1 (1x1) before the dynamic conv
            macs += _conv_macs_at(block.conv1, size)
        macs += dynamic.macs(size, option)
        out = option.output_size(size)
        after = block.conv3 if name == 'conv2' else block.conv2
        macs += _conv_macs_at(after, out)
        if block.downsample is not None:
            macs += sum(_conv_macs_at(m, out) for m in block.downsample
                        if isinstance(m, nn.Conv2d))
        return macs, out

    def macs(self, input_size, permutation=None) -> int:
        """Per-sample backbone MACs (stem included) of ``permutation``."""
        stem_out, stages = self.plan(input_size, permutation)
        return self._stem_macs(input_size) + sum(m for _, m in stages)

    def _stem_macs(self, input_size) -> int:
        size, macs = tuple(input_size), 0
        for conv in (m for m in (self.stem if self.deep_stem else [self.conv1])
                     if isinstance(m, nn.Conv2d)):
            size = conv_output_size(size, conv)
            macs += _conv_macs_at(conv, size)
        return macs

    # -- forward -------------------------------------------------------------------------

    def forward(self, x):
        samples = self._sample_permutations
        if samples is None:
            outs, executed = self._forward_permutation(x, self._permutation)
            records = executed
        else:
            if len(samples) != x.shape[0]:
                raise ValueError(f'{len(samples)} sample permutations were set for a batch '
                                 f'of {x.shape[0]}')
            outs, records = self._forward_per_sample(x, samples)
        self.store_forward_record(records)
        return outs

    def _forward_per_sample(self, x, samples):
        groups: Dict[Tuple, List[int]] = {}
        for index, permutation in enumerate(samples):
            groups.setdefault(permutation, []).append(index)
        results = {p: self._forward_permutation(x[idx], p) for p, idx in groups.items()}
        shapes = {tuple(o.shape[1:] for o in outs) for outs, _ in results.values()}
        if len(shapes) != 1:
            raise ValueError('the sample permutations give feature maps of different sizes; '
                             "batch them per permutation or use output_size='nominal'")
        first_outs, first_record = next(iter(results.values()))
        outs = [o.new_empty((x.shape[0], *o.shape[1:])) for o in first_outs]
        executed = {b.name: torch.empty(x.shape[0]) for b in first_record.blocks}
        for permutation, index in groups.items():
            group_outs, record = results[permutation]
            where = torch.as_tensor(index, device=x.device)
            for full, part in zip(outs, group_outs):
                full[where] = part
            for block in record.blocks:
                executed[block.name][index] = block.executed_flops.cpu()
        blocks = [BlockRecord(name=b.name, mask=torch.ones(x.shape[0], 1, 1, 1),
                              activation_rate=executed[b.name] / b.dense_flops,
                              dense_flops=b.dense_flops, executed_flops=executed[b.name],
                              grid=b.grid) for b in first_record.blocks]
        return tuple(outs), ForwardRecord(first_record.static_flops, blocks)

    def _forward_permutation(self, x, permutation):
        input_size = tuple(x.shape[2:])
        _, stages = self.plan(input_size, permutation)
        _, default_stages = self.plan(input_size, None)
        nominal = default_stages if self.output_size == 'nominal' else None
        options = dict(zip(self.dynamic_positions, permutation))
        batch = x.shape[0]
        x, stem_macs = self.stem_forward(x)
        outs, blocks = [], []
        for i, layer_name in enumerate(self.res_layers):
            layer = getattr(self, layer_name)
            option = options.get(POSITIONS[i])
            for k, block in enumerate(layer):
                if k == 0 and option is not None:
                    x = self.dynamic_block_forward(block, x, option)
                else:
                    x = block(x)
            (height, width), executed = stages[i]
            dense = default_stages[i][1]
            blocks.append(BlockRecord(
                name=layer_name, mask=torch.ones(batch, 1, 1, 1),
                activation_rate=torch.full((batch,), executed / dense),
                dense_flops=float(dense), executed_flops=torch.full((batch,), float(executed)),
                grid=PatchGrid(height, width, 1)))
            if i in self.out_indices:
                outs.append(x if nominal is None else resample(x, nominal[i][0]))
        return tuple(outs), ForwardRecord({'stem': stem_macs}, blocks)

    @staticmethod
    def dynamic_block_forward(block, x, option: ConvOption):
        """mmdet's Bottleneck / BasicBlock forward with the dynamic conv at ``option`` and
        the shortcut on the matching grid."""
        if isinstance(block, BasicBlock):
            out = block.relu(block.norm1(block.conv1(x, option)))
            out = block.norm2(block.conv2(out))
        else:
            out = block.relu(block.norm1(block.conv1(x)))
            out = block.relu(block.norm2(block.conv2(out, option)))
            out = block.norm3(block.conv3(out))
        return block.relu(out + shortcut_forward(block, x, option))


def shortcut_forward(block, x, option: ConvOption):
    """The identity branch on the output grid of ``option`` (the trained shortcut
    exactly when the option keeps the block's stride)."""
    conv = getattr(block, dynamic_conv_name(block))
    if option.stride == conv.default_option.stride:
        return x if block.downsample is None else block.downsample(x)
    avg_down = block.downsample is not None and isinstance(block.downsample[0], nn.AvgPool2d)
    if option.upsamples:
        x = F.interpolate(x, scale_factor=2, mode='nearest')
    elif option.stride > 1:
        x = F.avg_pool2d(x, option.stride, option.stride, ceil_mode=True,
                         count_include_pad=False) if avg_down else \
            x[..., ::option.stride, ::option.stride]
    if block.downsample is None:
        return x
    for module in block.downsample:
        if isinstance(module, nn.AvgPool2d):
            continue
        x = F.conv2d(x, module.weight, module.bias) if isinstance(module, nn.Conv2d) \
            else module(x)
    return x


def resample(x, size):
    """``x`` at spatial ``size``: adaptive average pooling when shrinking both sides,
    bilinear interpolation otherwise (identity when the size already matches)."""
    size = tuple(size)
    if tuple(x.shape[2:]) == size:
        return x
    if x.shape[2] >= size[0] and x.shape[3] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


@MODELS.register_module()
class ITDResNet(ITDResNetMixin, ResNet):
    """Inference-time-dynamic ResNet (depth 18/34/50/101/152) with mmdet ``ResNet``
    parameter names; mmseg ``ResNetV1c`` arguments (``deep_stem``, ``strides``,
    ``dilations``, ``contract_dilation``) are accepted for DeepLabv3/PSPNet.

    "The Untapped Potential of Off-the-Shelf Convolutional Neural Networks" (2021).

    Args:
        depth (int): Depth of the ResNet, one of {18, 34, 50, 101, 152}.
        dynamic_positions (Sequence[str]): which of A, B, C, D (first block of stage
            1..4) are dynamic. Default: ('A', 'B', 'C', 'D').
        upsampling_positions (Sequence[str], optional): where stride 1/2 may be asked
            for (None: every dynamic position). Default: None.
        output_size (str): ``'actual'`` (feature maps follow the permutation) or
            ``'nominal'`` (resampled to the default permutation's sizes, for
            detectors). Default: 'actual'.
        permutation (Sequence[ConvOption | dict | tuple] | dict, optional): the
            initial permutation (``None``: the default; a list of options, or a dict
            of per-position attribute values like ``dict(stride=(1, 2, 3, 2))``).
            Default: None.
        min_feature_size (int): the smallest feature map allowed (a clear error
            otherwise). Default: 1.
        contract_dilation (bool): mmseg ``ResNetV1c`` semantics, the first block of a
            dilated stage uses half the dilation. Default: False.
        multi_grid (Sequence[int], optional): mmseg ``ResNetV1c``'s multi-grid
            dilations; not supported, must be None. Default: None.
        **kwargs: other arguments: mmdet's ``ResNet`` (``style='pytorch'``, no
            ``dcn``, ``plugins`` or ``with_cp=True``; ``norm_cfg`` must be a
            BatchNorm).
    """

    mask_terms = MaskTerms('relative stage cost', 'computed', 'skipped')

    def __init__(self, depth: int, dynamic_positions: Sequence[str] = POSITIONS,
                 upsampling_positions: Optional[Sequence[str]] = None,
                 output_size: str = 'actual',
                 permutation: Optional[Union[Sequence[Union[ConvOption, Dict, Sequence]],
                                             Dict[str, Sequence]]] = None,
                 min_feature_size: int = 1, contract_dilation: bool = False,
                 multi_grid: Optional[Sequence[int]] = None, **kwargs):
        if depth not in self.arch_settings:
            raise ValueError(f'depth={depth!r} is not supported by {type(self).__name__}; '
                             f'choose one of {sorted(self.arch_settings)}')
        reject_unsupported(type(self).__name__, multi_grid, **kwargs)
        check_resnet_sizes(type(self).__name__, **kwargs)
        if kwargs.get('style', 'pytorch') != 'pytorch':
            raise ValueError(f"{type(self).__name__} needs style='pytorch' (the stride on "
                             'the 3x3 conv)')
        self.contract_dilation = contract_dilation
        super().__init__(depth=depth, **kwargs)
        self.init_itd(dynamic_positions, upsampling_positions, output_size, permutation,
                      min_feature_size)

    def make_res_layer(self, block, inplanes, planes, num_blocks, stride=1, dilation=1,
                       avg_down=False, **kwargs):
        return plain_res_layer(block, inplanes, planes, num_blocks, stride, dilation,
                               avg_down, self.contract_dilation, **kwargs,
                               **self.block_kwargs())

    def block_kwargs(self):
        return {}


@MODELS.register_module()
class ITDResNeXt(ITDResNet):
    """Inference-time-dynamic ResNeXt (depth 50/101/152; 32x4d: ``groups=32,
    base_width=4``) with mmdet ``ResNeXt`` parameter names.

    Args:
        depth (int): Depth of the ResNeXt, one of {50, 101, 152}.
        groups (int): number of groups of the 3x3 convs, as in mmdet's ``ResNeXt``.
            Default: 32.
        base_width (int): base width of each group, as in mmdet's ``ResNeXt``.
            Default: 4.
        **kwargs: other arguments: :class:`ITDResNet` (and through it mmdet's
            ``ResNet``).
    """
    arch_settings = {
        50: (ResNeXtBottleneck, (3, 4, 6, 3)),
        101: (ResNeXtBottleneck, (3, 4, 23, 3)),
        152: (ResNeXtBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int, groups: int = 32, base_width: int = 4, **kwargs):
        check_resnext_width(type(self).__name__, groups, base_width)
        self.groups, self.base_width = groups, base_width
        super().__init__(depth, **kwargs)

    def block_kwargs(self):
        return dict(groups=self.groups, base_width=self.base_width,
                    base_channels=self.base_channels)
