"""Choosing LAS-ResNet's patch size S per stage from the latency predictor.

LASNet (Sec. 3.2, 4.2) takes the candidates of a stage from the divisors of its
feature size, leaves out the full map (that would be layer skipping), fixes S = 1 in
the last stage and picks S by eye where the predicted r_l-vs-S curves flatten. Here the
pick is automatic: the S of each stage (or, with ``per_block``, of each block) that
minimises the predicted latency at activation rate r. The network latency is a sum of
block latencies and a block's latency depends only on its own S, so stage by stage
(block by block) minimisation is the exact minimum over all combinations.

The backbone comes from an mmdet/mmseg config (a plain mapping: the caller loads it,
e.g. with mmengine's ``Config.fromfile``; this module imports no OpenMMLab package):
depth, strides, stem and the config's own granularity from ``model.backbone``, the
input size from the test pipeline's ``Resize`` (``scale`` is (w, h)), padded as the
data preprocessor pads (``pad_size_divisor``), unless given. Dilation (mmseg's d8
layouts) changes neither the map sizes nor, in this model, the cost; it is not
modelled.
"""
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

from .hardware import Hardware, load_profile
from .network import (EXPANSION, STAGE_BLOCKS, STEM_CHANNELS, BlockPrediction,
                      NetworkLatency, StageLatency, _check_rate, _check_size, _half,
                      _per_block)
from .predictor import dynamic_block_latency, max_pool, static_block_latency, static_conv

DEFAULT_GRANULARITY = (4, 4, 2, 1)  # LASResNet's default


def check_rate(rate) -> float:
    """An activation rate for the search: a number in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0 < rate <= 1:
        raise ValueError(f'the activation rate must be a number in (0, 1], got {rate!r}')
    return float(rate)


def divisors(n: int) -> Tuple[int, ...]:
    return tuple(d for d in range(1, n + 1) if n % d == 0)


def candidate_sizes(h: int, w: int) -> Tuple[int, ...]:
    """Candidate S of an ``h x w`` stage: the divisors of h or of w other than h and w
    themselves (the full map is layer skipping), no larger than min(h, w). A square
    56 x 56 map gives 1, 2, 4, 7, 8, 14, 28 (LASNet Sec. 3.2)."""
    sizes = {d for d in divisors(h) if d < h} | {d for d in divisors(w) if d < w}
    sizes = sorted(s for s in sizes if s <= min(h, w))
    return tuple(sizes) or (1, )


@dataclass(frozen=True)
class BlockShape:
    stage: int
    index: int
    in_channels: int
    mid_channels: int
    out_channels: int
    in_hw: Tuple[int, int]
    stride: int
    downsample: bool

    @property
    def out_hw(self) -> Tuple[int, int]:
        return (_half(self.in_hw[0], self.stride), _half(self.in_hw[1], self.stride))


@dataclass(frozen=True)
class BackboneLayout:
    """What the predictor needs of a LAS-ResNet: depth, input size, per-stage strides,
    stem kind and the configured granularity (per-stage entries, as ``LASResNet``)."""
    depth: int
    input_hw: Tuple[int, int]
    strides: Tuple[int, ...] = (1, 2, 2, 2)
    deep_stem: bool = False
    granularity: tuple = DEFAULT_GRANULARITY
    dilations: Tuple[int, ...] = (1, 1, 1, 1)
    notes: Tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.depth not in STAGE_BLOCKS:
            kind = ' (BasicBlock: not modelled)' if self.depth in (18, 34) else ''
            raise ValueError(f'LASResNet depth {self.depth!r}{kind}: the predictor models '
                             f'bottleneck depths {sorted(STAGE_BLOCKS)}')
        if len(self.input_hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                          or v < 1 for v in self.input_hw):
            raise ValueError(f'input size must be two positive ints, got {self.input_hw!r}')
        if len(self.strides) != 4 or any(s not in (1, 2) for s in self.strides):
            raise ValueError(f'strides must be 4 values of 1 or 2, got {self.strides!r}')

    @property
    def stage_blocks(self) -> Tuple[int, ...]:
        return STAGE_BLOCKS[self.depth]

    def stem_hw(self) -> Tuple[int, int]:
        """The map after the stem (conv /2, max pool /2)."""
        return _half(_half(self.input_hw[0])), _half(_half(self.input_hw[1]))

    def blocks(self) -> Iterator[BlockShape]:
        h, w = self.stem_hw()
        channels = STEM_CHANNELS
        for stage, n_blocks in enumerate(self.stage_blocks):
            mid = STEM_CHANNELS * 2 ** stage
            for k in range(n_blocks):
                stride = self.strides[stage] if k == 0 else 1
                block = BlockShape(stage, k, channels, mid, mid * EXPANSION, (h, w), stride,
                                   k == 0)
                yield block
                h, w = block.out_hw
                channels = mid * EXPANSION

    def stage_maps(self) -> Tuple[Tuple[int, int], ...]:
        """Output map size of every stage (what S tiles)."""
        maps = {}
        for block in self.blocks():
            maps[block.stage] = block.out_hw
        return tuple(maps[s] for s in range(4))


def _stem(hw: Hardware, layout: BackboneLayout):
    h, w = layout.input_hw
    if layout.deep_stem:  # mmseg ResNetV1c: 3x3/2 (3 -> 32), 3x3 (32 -> 32), 3x3 (-> 64)
        half = STEM_CHANNELS // 2
        ops = (static_conv(hw, 3, half, h, w, 3, 2, name='stem_conv1'), )
        h, w = _half(h), _half(w)
        ops += (static_conv(hw, half, half, h, w, 3, name='stem_conv2'),
                static_conv(hw, half, STEM_CHANNELS, h, w, 3, name='stem_conv3'))
    else:
        ops = (static_conv(hw, 3, STEM_CHANNELS, h, w, 7, 2, name='stem_conv'), )
        h, w = _half(h), _half(w)
    return ops + (max_pool(hw, STEM_CHANNELS, h, w, 3, 2, name='stem_pool'), )


def _resolve(hw: Union[Hardware, str]) -> Hardware:
    return load_profile(hw) if isinstance(hw, str) else hw


def predict_backbone(hw: Union[Hardware, str], layout: BackboneLayout,
                     granularity=None, rate=0.5) -> NetworkLatency:
    """Predicted latency of the backbone of ``layout`` with ``granularity`` (default:
    the layout's own) at activation rate ``rate`` in every block (a number in (0, 1]),
    or per stage and block as :func:`~mmdyn.latency.predict_las_resnet`'s ``rates``
    (e.g. :func:`~mmdyn.latency.rates_from_record`). Equals
    :func:`~mmdyn.latency.predict_las_resnet` for mmdet's layout."""
    hw = _resolve(hw)
    if isinstance(rate, Real):
        rate = check_rate(rate)
    rates = _per_block(rate, layout.stage_blocks, 'rates', _check_rate)
    granularity = layout.granularity if granularity is None else granularity
    sizes = _per_block(granularity, layout.stage_blocks, 'granularity', _check_size)
    stages = [[] for _ in layout.stage_blocks]
    for b in layout.blocks():
        S, rate = sizes[b.stage][b.index], rates[b.stage][b.index]
        args = (hw, b.in_channels, b.mid_channels, b.out_channels, *b.in_hw)
        stages[b.stage].append(BlockPrediction(
            b.stage, b.index, S, rate, b.in_hw,
            dynamic_block_latency(*args, S, rate, b.stride, b.downsample, dense_route=True),
            static_block_latency(*args, b.stride, b.downsample)))
    return NetworkLatency(hw.name, layout.depth, tuple(layout.input_hw), _stem(hw, layout),
                          tuple(StageLatency(tuple(s)) for s in stages))


@dataclass(frozen=True)
class GranularitySearch:
    """The result of :func:`search_granularity`."""
    hardware: str
    rate: float
    per_block: bool
    tolerance: float
    layout: BackboneLayout
    candidates: Tuple[Tuple[int, ...], ...]  # per stage
    granularity: tuple  # per stage: an int, or a tuple per block with per_block
    costs: Tuple[Dict[int, float], ...]  # per stage: {S: stage latency, s} (stage mode)
    best: NetworkLatency
    configured: NetworkLatency  # the layout's own granularity

    def describe(self) -> str:
        def fmt(g):
            return '-'.join(str(s) if isinstance(s, int) else '[' + ','.join(map(str, s)) + ']'
                            for s in g)
        lines = [f'LAS-ResNet-{self.layout.depth} at {self.layout.input_hw[0]}x'
                 f'{self.layout.input_hw[1]}, r = {self.rate:g}, profile {self.hardware}'
                 + (f', tolerance {self.tolerance:g}' if self.tolerance else '')]
        for stage, cands in enumerate(self.candidates):
            h, w = self.layout.stage_maps()[stage]
            lines.append(f'  stage {stage + 1} ({h}x{w}): candidates '
                         f'{", ".join(map(str, cands))}')
        lines += [f'  chosen S     {fmt(self.granularity):<24} predicted latency '
                  f'{self.best.dynamic * 1e3:9.3f} ms, ratio {self.best.ratio:.3f}',
                  f'  configured S {fmt(self.layout.granularity):<24} predicted latency '
                  f'{self.configured.dynamic * 1e3:9.3f} ms, ratio {self.configured.ratio:.3f}',
                  f'  static twin  {"":<24} predicted latency {self.best.static * 1e3:9.3f} ms']
        lines += [f'  note: {n}' for n in self.layout.notes]
        return '\n'.join(lines)


def _block_cost(hw, b: BlockShape, S: int, rate: float) -> float:
    return dynamic_block_latency(hw, b.in_channels, b.mid_channels, b.out_channels,
                                 *b.in_hw, S, rate, b.stride, b.downsample,
                                 dense_route=True).total


def _pick(costs: Dict[int, float], tolerance: float) -> int:
    """The smallest S whose cost is within ``1 + tolerance`` of the minimum."""
    best = min(costs.values())
    return min(S for S, c in costs.items() if c <= best * (1 + tolerance))


def search_granularity(hw: Union[Hardware, str], layout: BackboneLayout, rate: float,
                       per_block: bool = False, candidates: Optional[Sequence[int]] = None,
                       tolerance: float = 0.0) -> GranularitySearch:
    """The S per stage (``per_block``: per block) with the smallest predicted latency at
    ``rate``; the last stage stays at S = 1 (LASNet Sec. 3.2). ``candidates``: one list
    for every stage instead of :func:`candidate_sizes` (sizes larger than a stage's
    map are dropped). Ties go to the smaller S.

    The predictor has no accuracy term, and larger patches are usually predicted
    faster at a fixed rate; LASNet picks S where the latency-vs-S curve flattens. With
    ``tolerance`` > 0 the smallest S whose predicted latency is within a factor
    ``1 + tolerance`` of the minimum is taken instead. Default: 0 (the minimum)."""
    hw = _resolve(hw)
    rate = check_rate(rate)
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or tolerance < 0:
        raise ValueError(f'tolerance must be a number >= 0, got {tolerance!r}')
    maps = layout.stage_maps()
    per_stage = []
    for stage, (h, w) in enumerate(maps):
        if stage == len(maps) - 1:
            per_stage.append((1, ))
        elif candidates is None:
            per_stage.append(candidate_sizes(h, w))
        else:
            fits = tuple(sorted({_check_size(int(s), 'candidates') for s in candidates
                                 if s <= min(h, w)}))
            per_stage.append(fits or (1, ))
    blocks = list(layout.blocks())
    costs, chosen = [], []
    for stage, cands in enumerate(per_stage):
        mine = [b for b in blocks if b.stage == stage]
        table = {S: [_block_cost(hw, b, S, rate) for b in mine] for S in cands}
        costs.append({S: sum(v) for S, v in table.items()})
        if per_block:
            chosen.append(tuple(_pick({S: table[S][k] for S in cands}, tolerance)
                                for k in range(len(mine))))
        else:
            chosen.append(_pick(costs[-1], tolerance))
    granularity = tuple(chosen)
    return GranularitySearch(hw.name, rate, per_block, float(tolerance), layout,
                             tuple(per_stage), granularity, tuple(costs),
                             predict_backbone(hw, layout, granularity, rate),
                             predict_backbone(hw, layout, layout.granularity, rate))


# ---------------------------------------------------------------- configs

def _get(mapping, key, default=None):
    try:
        return mapping.get(key, default)
    except AttributeError:
        return default


def _resize_scale(pipeline) -> Optional[Tuple[int, int]]:
    """(h, w) of the first ``Resize`` step with a ``scale`` in a (nested) pipeline."""
    for step in pipeline or ():
        kind = str(_get(step, 'type', '')).split('.')[-1]
        if kind == 'Resize' and _get(step, 'scale') is not None:
            scale = _get(step, 'scale')
            if isinstance(scale, int):
                return scale, scale
            return int(scale[1]), int(scale[0])  # mmcv/mmdet/mmseg scale is (w, h)
        nested = _get(step, 'transforms')
        if nested:  # TestTimeAug / MultiScaleFlipAug: the first variant
            found = _resize_scale(nested[0] if isinstance(nested[0], (list, tuple))
                                  else nested)
            if found:
                return found
    return None


def input_size_from_config(cfg: Mapping) -> Tuple[int, int]:
    """The backbone input (h, w) a config tests at: its test pipeline's ``Resize``
    scale (images assumed to fill it), padded to ``pad_size_divisor``; mmseg's
    ``slide`` inference uses ``crop_size``."""
    model = _get(cfg, 'model', {}) or {}
    test_cfg = _get(model, 'test_cfg', {}) or {}
    if _get(test_cfg, 'mode') == 'slide' and _get(test_cfg, 'crop_size'):
        h, w = _get(test_cfg, 'crop_size')
        return int(h), int(w)
    dataset = _get(_get(cfg, 'test_dataloader', {}) or {}, 'dataset', {}) or {}
    while _get(dataset, 'pipeline') is None and _get(dataset, 'dataset') is not None:
        dataset = _get(dataset, 'dataset')
    hw = _resize_scale(_get(dataset, 'pipeline')) or _resize_scale(_get(cfg, 'test_pipeline'))
    if hw is None:
        raise ValueError('could not read the input size from the config\'s test pipeline '
                         '(no Resize with a scale); give it explicitly (--input H W)')
    divisor = _get(_get(model, 'data_preprocessor', {}) or {}, 'pad_size_divisor') or 1
    return tuple(int(math.ceil(v / divisor) * divisor) for v in hw)


def layout_from_config(cfg: Mapping, input_hw: Optional[Tuple[int, int]] = None
                       ) -> BackboneLayout:
    """The :class:`BackboneLayout` of a config's ``model.backbone`` (a LASResNet);
    a ValueError names what is missing or unsupported."""
    backbone = _get(_get(cfg, 'model', {}) or {}, 'backbone')
    kind = str(_get(backbone, 'type', '')).split('.')[-1] if backbone is not None else ''
    if kind != 'LASResNet':
        raise ValueError(f'the config has no LASResNet backbone (model.backbone.type is '
                         f'{kind or None!r})')
    if _get(backbone, 'depth') is None:
        raise ValueError('model.backbone (LASResNet) has no depth')
    if _get(backbone, 'num_stages', 4) != 4:
        raise ValueError('only 4-stage LASResNets are modelled, got num_stages='
                         f'{_get(backbone, "num_stages")!r}')
    notes = []
    dilations = tuple(_get(backbone, 'dilations', (1, 1, 1, 1)))
    if any(d != 1 for d in dilations):
        notes.append(f'dilations {dilations} are not modelled (map sizes follow the '
                     'strides; the halo of a dilated 3x3 conv is larger in reality)')
    if input_hw is None:
        input_hw = input_size_from_config(cfg)
        notes.append(f'input {input_hw[0]}x{input_hw[1]} from the test pipeline')
    granularity = _get(backbone, 'granularity', DEFAULT_GRANULARITY)
    granularity = tuple(tuple(g) if isinstance(g, (list, tuple)) else g for g in granularity)
    return BackboneLayout(int(_get(backbone, 'depth')), tuple(int(v) for v in input_hw),
                          tuple(_get(backbone, 'strides', (1, 2, 2, 2))),
                          bool(_get(backbone, 'deep_stem', False)), granularity, dilations,
                          tuple(notes))


def granularity_literal(granularity) -> str:
    """Python source of a granularity tuple, e.g. ``(8, 4, 7, 1)`` or per-block
    ``((4, 4, 8), ...)``."""
    def one(g):
        return str(g) if isinstance(g, int) else '(' + ', '.join(map(str, g)) + \
            (',)' if len(g) == 1 else ')')
    return '(' + ', '.join(one(g) for g in granularity) + ')'


def derived_config_text(base: str, result: GranularitySearch) -> str:
    """An mmengine config inheriting ``base`` (a path relative to the new file, or
    absolute) with the searched granularity."""
    tol = f', tolerance {result.tolerance:g}' if result.tolerance else ''
    return (f'# Written by tools/analysis/search_granularity.py: LAS-ResNet-'
            f'{result.layout.depth} patch sizes\n# minimising the predicted latency at '
            f'r = {result.rate:g} on profile {result.hardware!r}{tol}\n# (input '
            f'{result.layout.input_hw[0]}x{result.layout.input_hw[1]}): predicted ratio to '
            f'the static twin {result.best.ratio:.3f};\n# configured S '
            f'{granularity_literal(result.layout.granularity)}: '
            f'{result.configured.ratio:.3f}.\n'
            f'_base_ = {base!r}\n'
            f'model = dict(backbone=dict(granularity={granularity_literal(result.granularity)}))\n')
