"""Pieces of mmdet's ResNet that the dynamic backbones rebuild: the shortcut
projection, mmseg's contracted dilation, the FLOPs of a plain (static) block, and the
BatchNorm-folded inference of the static parts (stem, static blocks, projections)."""
import difflib
import inspect
from typing import Tuple

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer, fuse_conv_bn
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck
from torch import nn

from mmdyn.ops import conv_macs, stem_conv_pool
from mmdyn.ops.row_buffers import RowBuffers
from .dynamic import (DynamicBackboneMixin, DynamicBlockMixin, check_number, fold_cache_of,
                      folded_cached)


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
    check_norm_cfg(backbone, kwargs.get('norm_cfg'))


def check_resnet_sizes(backbone: str, num_stages=4, strides=(1, 2, 2, 2),
                       dilations=(1, 1, 1, 1), base_channels=64, stem_channels=None,
                       **_):
    """Clear build-time errors for the sizes of mmdet's ``ResNet`` (which asserts, or
    fails deep in torch on a negative width): ``num_stages`` an int in [1, 4],
    ``strides`` / ``dilations`` one positive int per stage, positive channel counts."""
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) \
            or not 1 <= num_stages <= 4:
        raise ValueError(f'{backbone}: num_stages={num_stages!r} must be an int in [1, 4]')
    for name, values in (('strides', strides), ('dilations', dilations)):
        if not isinstance(values, (list, tuple)) or len(values) != num_stages or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ValueError(f'{backbone}: {name}={values!r} must be {num_stages} positive '
                             f'ints, one per stage (num_stages={num_stages})')
    check_number(base_channels, 'base_channels', low=1, integer=True)
    if stem_channels is not None:
        check_number(stem_channels, 'stem_channels', low=1, integer=True)


def check_resnext_width(backbone: str, groups, base_width):
    """ResNeXt's ``groups`` and ``base_width``: positive ints."""
    check_number(groups, f'{backbone}: groups', low=1, integer=True)
    check_number(base_width, f'{backbone}: base_width', low=1, integer=True)


#: norm layers the sparse path can fold into the convs (mmcv registry names)
FOLDABLE_NORMS = ('BN', 'BN2d', 'SyncBN')


def check_norm_cfg(backbone: str, norm_cfg):
    """The sparse executors fold BatchNorm into the convs: other norms are refused at
    build time (``None`` keeps mmdet's default BN)."""
    if norm_cfg is None:
        return
    kind = norm_cfg.get('type') if isinstance(norm_cfg, dict) else None
    if kind not in FOLDABLE_NORMS:
        raise ValueError(f'{backbone}: norm_cfg={norm_cfg!r} is not supported; the sparse '
                         f'path folds BatchNorm into the convs: use type one of '
                         f'{FOLDABLE_NORMS}')


def output_memory_format(x: torch.Tensor):
    """The layout a dense ResNet returns for the input ``x``: channels-last for a
    channels-last input (torch's convolutions keep it), plain NCHW otherwise (the
    sparse paths work channels-last inside; some consumers, mmcv's CPU RoIAlign, read
    raw memory assuming NCHW, and mmdet/mmseg data preprocessors give NCHW)."""
    if x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def run_resnet_stem(backbone, x, fold: bool = False):
    """The stem of an mmdet/mmseg ResNet (deep or not), before the max-pool; with
    ``fold`` its BatchNorms are folded into the convs (inference)."""
    if fold:
        return run_folded_sequence(backbone.stem if backbone.deep_stem else
                                   (backbone.conv1, backbone.norm1, backbone.relu),
                                   x, fold_cache_of(backbone), 'stem')
    if backbone.deep_stem:
        return backbone.stem(x)
    return backbone.relu(backbone.norm1(backbone.conv1(x)))


def run_stem_and_pool(backbone, x, fold: bool = False):
    """The stem of an mmdet/mmseg ResNet and its max-pool; with ``fold`` BatchNorm-folded,
    a plain stem's conv, ReLU and max-pool by :func:`~mmdyn.ops.stem.stem_conv_pool`
    (band by band where that was measured faster)."""
    if fold and not backbone.deep_stem and type(backbone.relu) is nn.ReLU:
        conv = folded_cached(fold_cache_of(backbone), 'stem.0', backbone.conv1,
                             backbone.norm1)
        return stem_conv_pool(x, conv, backbone.maxpool)
    return backbone.maxpool(run_resnet_stem(backbone, x, fold))


def stem_convs(backbone) -> list:
    """The convolutions of an mmdet/mmseg ResNet's stem, in order."""
    return [m for m in (backbone.stem if backbone.deep_stem else [backbone.conv1])
            if isinstance(m, nn.Conv2d)]


def stem_output_size(backbone, height: int, width: int) -> Tuple[int, int]:
    """The size of the stem's output (before the max-pool) for a ``height x width``
    input."""
    size = (height, width)
    for conv in stem_convs(backbone):
        size = conv_output_size(size, conv)
    return size


def run_folded_sequence(layers, x, cache: dict, prefix: str):
    """Run conv / norm / activation / pool layers in order at inference, each conv
    with the BatchNorm right after it folded in (cached in ``cache``)."""
    layers = list(layers)
    k = 0
    while k < len(layers):
        layer = layers[k]
        if isinstance(layer, nn.Conv2d):
            norm = layers[k + 1] if k + 1 < len(layers) and isinstance(
                layers[k + 1], (nn.modules.batchnorm._BatchNorm, nn.Identity)) else None
            x = folded_cached(cache, f'{prefix}.{k}', layer, norm)(x)
            k += 2 if norm is not None else 1
        else:
            x = layer(x)
            k += 1
    return x


def _is_block(block, name: str) -> bool:
    """mmseg's ResNet block of that name (the same layers as mmdet's)."""
    return type(block).__name__ == name and type(block).__module__.startswith('mmseg.')


def run_folded_block(block, x, overwrite_input: bool = False):
    """An mmdet (or mmseg) ``BasicBlock`` / ``Bottleneck`` at inference with its
    BatchNorms (and its shortcut's) folded into the convs, cached on the block: the same
    function as ``block(x)`` in eval mode, without the separate normalisation passes.
    ``overwrite_input``: the caller never reads ``x`` again, so a block without a
    projection adds its last conv onto ``x`` in place (no fresh output map; while an
    autograd graph is recorded it never does)."""
    cache = fold_cache_of(block)
    if getattr(block, 'with_dcn', False) or getattr(block, 'with_plugins', False):
        raise TypeError(f'run_folded_block: {type(block).__name__} has a deformable conv '
                        'or plugins; only plain blocks are folded')
    if isinstance(block, Bottleneck) or _is_block(block, 'Bottleneck'):
        convs = ((block.conv1, block.norm1), (block.conv2, block.norm2),
                 (block.conv3, block.norm3))
    elif isinstance(block, BasicBlock) or _is_block(block, 'BasicBlock'):
        convs = ((block.conv1, block.norm1), (block.conv2, block.norm2))
    else:
        raise TypeError(f'run_folded_block: {type(block).__name__} is not an mmdet or '
                        'mmseg BasicBlock or Bottleneck')
    out = x
    for k, (conv, norm) in enumerate(convs[:-1]):
        out = folded_cached(cache, f'conv{k + 1}', conv, norm)(out, relu=True)
    last = folded_cached(cache, f'conv{len(convs)}', *convs[-1])
    identity = x if block.downsample is None else run_folded_sequence(
        block.downsample, x, cache, 'downsample')
    if identity is x and not (overwrite_input and not torch.is_grad_enabled()):
        return last(out).add_(identity).relu_()  # x may be read again: not in place
    # the shortcut's fresh map (or the free input) takes the last conv's product
    return last.accumulate_map_(identity, out, relu=True)


def run_static_layer(layer, x, fold: bool):
    """A stage of static blocks (an ``nn.Sequential``): ``layer(x)``, or block by
    block with folded BatchNorms at sparse inference."""
    if not fold:
        return layer(x)
    for k, block in enumerate(layer):  # blocks after the first own their input
        x = run_folded_block(block, x, overwrite_input=k > 0)
    return x


def plain_res_layer(block, inplanes: int, planes: int, num_blocks: int, stride: int,
                    dilation: int, avg_down: bool, contract_dilation: bool, conv_cfg=None,
                    norm_cfg=dict(type='BN'), per_block=None, **kwargs) -> nn.Sequential:
    """A ResNet stage as mmdet's ResLayer builds it, with mmseg's contracted dilation
    for the first block; ``per_block(k)`` adds keyword arguments of block ``k`` (a
    dynamic block's name, granularity, ...)."""
    out_channels = planes * block.expansion
    extra = per_block or (lambda k: {})
    first = block(inplanes=inplanes, planes=planes, stride=stride,
                  dilation=first_block_dilation(dilation, contract_dilation),
                  downsample=build_shortcut(inplanes, out_channels, stride, avg_down,
                                            conv_cfg, norm_cfg),
                  conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs, **extra(0))
    rest = [block(inplanes=out_channels, planes=planes, dilation=dilation,
                  conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs, **extra(k))
            for k in range(1, num_blocks)]
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


def accepted_keywords(cls) -> set:
    """The keyword arguments ``cls.__init__`` takes, following ``**kwargs`` up its MRO
    (ResNeXt hands them to ResNet)."""
    names = set()
    for klass in cls.__mro__:
        if '__init__' not in vars(klass) or klass is object:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {'self'}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


class DynamicResNetMixin(DynamicBackboneMixin):
    """What a dynamic subclass of mmdet's ``ResNet`` shares: the stem with its FLOPs,
    the controls set at build time, a ``train()`` that returns ``self``, and unknown
    arguments reported as this backbone's (mmdet's ResNet would name itself)."""

    def __init__(self, *args, **kwargs):
        base = type(self).__mro__[type(self).__mro__.index(DynamicBackboneMixin) + 1]
        unknown = sorted(set(kwargs) - accepted_keywords(base))
        if unknown:
            known = accepted_keywords(type(self)) | accepted_keywords(base)
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            raise TypeError(f'{type(self).__name__} got an unexpected argument '
                            f'{unknown[0]!r}' + (f' (did you mean {close[0]!r}?)' if close
                                                 else ''))
        super().__init__(*args, **kwargs)

    def finish_dynamic_init(self, execution_mode: str, temperature: float):
        """Call at the end of ``__init__``, after ``ResNet.__init__``."""
        self._stem_macs_per_pixel = sum(
            conv_macs(c.in_channels, c.out_channels, c.kernel_size[0], c.groups)
            for c in stem_convs(self))
        self.set_execution_mode(execution_mode)
        self.set_temperature(temperature)
        shared = RowBuffers()
        for block in self.dynamic_blocks():
            # forward() never reads a dynamic block's input again (a stage output kept
            # for out_indices feeds a static block or a shortcut projection), so the
            # blocks may overwrite it at inference.
            block.owns_input = True
            block.row_buffers = shared

    def train(self, mode: bool = True):
        """mmdet's ResNet.train() returns None; keep nn.Module's ``return self``."""
        super().train(mode)
        return self

    def _freeze_stages(self):
        """Frozen stages keep their dense weights frozen, but the parts the dynamic
        blocks add (:meth:`DynamicBlockMixin.new_parts`) train, and those blocks follow
        the backbone's mode (masked path in training) while their BatchNorms stay in
        eval."""
        super()._freeze_stages()
        for stage in range(1, self.frozen_stages + 1):
            for block in getattr(self, f'layer{stage}').modules():
                if not isinstance(block, DynamicBlockMixin):
                    continue
                block.training = self.training
                for part in block.new_parts():
                    if isinstance(part, nn.Module):
                        part.train(self.training)
                    part.requires_grad_(True)

    # -- DESIGN contract 7: benchmarkable from its config ----------------------------

    #: substrings of the state-dict keys the dense twin does not have (gates, mask
    #: heads, learned mask sources); None: the twin's architecture differs (SAR-ResNet),
    #: it gets no weights from this backbone.
    twin_extra_keys: Tuple[str, ...] = ('masker.', '_mask.', '_sigma', 'mask_source.')

    def static_twin(self) -> nn.Module:
        """The dense network this backbone extends, with its weights where the
        architectures match: mmdet's ``ResNet`` / ``ResNeXt``, or mmseg's for
        ``contract_dilation`` layouts; eval mode, every BatchNorm folded, channels-last.
        With every mask on (LAS, SFSI), every cell kept (CAD) or the default permutation
        (ITD) the backbone computes exactly this network."""
        return self._with_own_weights(self._dense_resnet())

    def _with_own_weights(self, twin: nn.Module) -> nn.Module:
        """``twin`` with this backbone's weights (where the architectures match), eval
        mode, every BatchNorm folded, channels-last."""
        if self.twin_extra_keys is not None:
            missing, unexpected = twin.load_state_dict(self.state_dict(), strict=False)
            foreign = [k for k in unexpected if not any(e in k for e in self.twin_extra_keys)]
            if missing or foreign:
                raise RuntimeError(f'{type(self).__name__}.static_twin: the dense network '
                                   f'does not match (missing {missing[:5]}, unexpected '
                                   f'{foreign[:5]})')
        twin.eval()  # mmdet's ResNet.eval() returns None: do not chain
        return fuse_conv_bn(twin).to(memory_format=torch.channels_last)

    def _dense_resnet(self, **layout) -> nn.Module:
        """The dense ResNet of this backbone's architecture; ``layout``: other
        ``strides`` / ``dilations``."""
        kwargs = dict(depth=self.depth, num_stages=self.num_stages, strides=self.strides,
                      dilations=self.dilations, out_indices=self.out_indices,
                      deep_stem=self.deep_stem, avg_down=self.avg_down,
                      base_channels=self.base_channels, stem_channels=self.stem_channels,
                      dcn=getattr(self, 'dcn', None),
                      stage_with_dcn=getattr(self, 'stage_with_dcn', (False,) * 4),
                      init_cfg=None)
        kwargs.update(layout)
        if getattr(self, 'contract_dilation', False):
            from mmseg.models.backbones import ResNet, ResNeXt
            kwargs['contract_dilation'] = True
        else:
            from mmdet.models.backbones import ResNet, ResNeXt
        groups = getattr(self, 'groups', 1)
        if groups == 1:
            return ResNet(**kwargs)
        return ResNeXt(groups=groups, base_width=self.base_width, **kwargs)

    def prepare_for_timing(self, mode: str = 'sparse') -> nn.Module:
        """Timed inference as deployed: eval mode, execution ``mode`` (the sparse path
        by default), every BatchNorm folded (mmcv's ``fuse_conv_bn``), channels-last.
        Returns ``self``."""
        self.eval()
        self.set_execution_mode(mode)
        return fuse_conv_bn(self).to(memory_format=torch.channels_last)

    def folds_static_parts(self) -> bool:
        """Whether this forward folds the BatchNorms of the static parts (stem, static
        blocks, projections): on the sparse inference path, as the dynamic blocks do."""
        first = next((m for m in self.modules() if isinstance(m, DynamicBlockMixin)), None)
        return first is not None and first.use_sparse_path()

    def stem_forward(self, x):
        """The stem and max-pool; returns the map and the stem's per-sample FLOPs."""
        height, width = stem_output_size(self, x.shape[2], x.shape[3])
        return (run_stem_and_pool(self, x, fold=self.folds_static_parts()),
                height * width * self._stem_macs_per_pixel)
