"""SAR-ResNet on a CPU engine model: refinement blocks and the whole backbone.

SAR (Han et al., IEEE TIP 2021) splits stages 1-3 of a ResNet into a dense transition
block, a base branch at 1/s resolution and width C/alpha (Eq. 1), n - 1 refinement
blocks at full resolution whose grouped convs compute only the cells their G region
masks select (Eq. 2-4), the branch projections and the adaptive fusion (Eq. 5); stage
4 is a plain ResNet stage. mmdyn runs the refinement blocks (``RefineBottleneck``) on
one of two routes, and the engine model here counts the operators of each:

- sparse (``refine_sparse``), per group with P selected K x K-grid cells of
  ``ph x pw`` pixels: the group's identity rows gathered, conv1 as a GEMM on the
  selected pixels, a zero canvas of the group's map holding them, the cells' windows
  (cell + 1-pixel halo) gathered from it, conv2 as a VALID 3x3 conv on the window
  stack, conv3 accumulated onto the identity rows, ReLU and a row copy back; a fixed
  cost per group that has cells (``sar_group_call``);
- dense (``refine_dense``): the grouped convs on the whole map, the masks applied
  after each (unless every cell is selected), the residual add and ReLU.

Both pay the region selector (a grouped 3x3 conv on the base features) and a fixed
cost per block (``sar_call``: pooling, the mask decision, records). As mmdyn's dense
fallback does, a block is predicted on the cheaper route. Everything else in the
backbone is dense (:func:`.predictor.static_block_latency` and oneDNN 1x1 convs);
the fusion and the base branch's average pooling are costed by the bytes they move.
The static twin is the plain ResNet of the same depth. Only bottleneck depths (50,
101) are modelled: ``RefineBasicBlock`` (SAR-ResNet-18/34) is not.
"""
import math
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from .engine import Features, dense_conv, total_features, window_key
from .hardware import Hardware, load_profile
from .network import EXPANSION, STEM_CHANNELS, _check_rate, _half, _per_block
from .predictor import (BlockLatency, OpLatency, _engine_block, crossover_rate,
                        static_block_latency)
from .search import BackboneLayout, _stem, input_size_from_config

SAR_STAGES = 3
SAR_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_SETTING = re.compile(r'^G(\d+)s(\d+)a(\d+)(?:b(\d+(?:\.\d+)?))?$')
GUIDE_WIDTH_PER_GROUP = 4  # the region selector's 3x3 conv: 4 G outputs, G groups


@dataclass(frozen=True)
class SARSetting:
    """G (groups), s (base scale), alpha (base width reduction), beta (refinement width
    factor) of every SAR stage, and K (mask grid) per stage."""
    groups: Tuple[int, ...]
    base_scale: Tuple[int, ...]
    alpha: Tuple[int, ...]
    beta: Tuple[float, ...]
    mask_size: Tuple[int, ...]

    @classmethod
    def parse(cls, setting: str = 'G2s2a2b1',
              mask_size: Union[int, Sequence[int]] = (7, 7, 2)) -> 'SARSetting':
        """From the paper's shorthand (``'G2s2a2b1'``, as ``SARResNet(sar_setting=)``)."""
        found = _SETTING.match(str(setting))
        if not found:
            raise ValueError(f'SAR setting {setting!r}: expected G<g>s<s>a<alpha>[b<beta>], '
                             "e.g. 'G2s2a2b1'")
        g, s, a, b = found.groups()
        sizes = (mask_size, ) * SAR_STAGES if isinstance(mask_size, int) else tuple(mask_size)
        if len(sizes) != SAR_STAGES or any(isinstance(k, bool) or not isinstance(k, int)
                                           or k < 1 for k in sizes):
            raise ValueError(f'mask_size must be one positive int or {SAR_STAGES}, '
                             f'got {mask_size!r}')
        if int(s) & (int(s) - 1) or int(s) < 1:
            raise ValueError(f'SAR setting {setting!r}: the base scale s must be a power of 2')
        return cls((int(g), ) * SAR_STAGES, (int(s), ) * SAR_STAGES, (int(a), ) * SAR_STAGES,
                   (float(b or 1), ) * SAR_STAGES, sizes)


def cell_grid(h: int, w: int, mask_size: int) -> Tuple[int, int, int, int]:
    """``(ph, pw, rows, cols)`` of SAR's K x K region grid on an ``h x w`` map: cells of
    ceil(h/K) x ceil(w/K) pixels from the top left (``_RefineBlock.grid_for``)."""
    ph, pw = math.ceil(h / mask_size), math.ceil(w / mask_size)
    return ph, pw, math.ceil(h / ph), math.ceil(w / pw)


def _selector_and_identity(llc, cin, cout, h, w, groups, guide, downsample):
    """What both routes pay: the region selector on the base features ``guide`` =
    (channels, h, w), the block's fixed cost and the shortcut projection."""
    ops = {'selector': dense_conv(llc, guide[0], GUIDE_WIDTH_PER_GROUP * groups, 3,
                                  guide[1], guide[2], groups=groups)}
    ops['selector'].add('sar_call', 1.0)
    if downsample:
        ops['downsample'] = dense_conv(llc, cin, cout, 1, h, w)
    return ops


def refinement_ops(llc_bytes: int, cin: int, mid: int, cout: int, h: int, w: int,
                   groups: int, mask_size: int, cells: Sequence[int],
                   guide: Tuple[int, int, int], route: str = 'sparse',
                   downsample: bool = False) -> Dict[str, Dict[str, float]]:
    """Features of a SAR refinement bottleneck's operators on ``route`` (``'sparse'``
    or ``'dense'``) with ``cells[g]`` selected cells in group g (module docstring)."""
    if len(cells) != groups:
        raise ValueError(f'give one cell count per group ({groups}), got {list(cells)}')
    ph, pw, rows, cols = cell_grid(h, w, mask_size)
    if any(not 0 <= p <= rows * cols for p in cells):
        raise ValueError(f'cell counts {list(cells)} outside [0, {rows * cols}]')
    ops = _selector_and_identity(llc_bytes, cin, cout, h, w, groups, guide, downsample)
    cin_g, mid_g, cout_g = cin // groups, mid // groups, cout // groups
    if route == 'dense':
        partial = any(p < rows * cols for p in cells)
        for name, (ci, co, k) in (('conv1', (cin, mid, 1)), ('conv2', (mid, mid, 3)),
                                  ('conv3', (mid, cout, 1))):
            op = ops[name] = dense_conv(llc_bytes, ci, co, k, h, w, groups=groups)
            op.move((2 + 3 * partial) * co * h * w)  # ReLU in place; the mask multiply
        ops['conv1'].add('dense_call', 1.0)
        ops['add'] = Features(llc_bytes)
        ops['add'].move(5 * cout * h * w)  # residual + identity, ReLU in place
        return {k: v.values for k, v in ops.items()}
    if route != 'sparse':
        raise ValueError(f"route must be 'sparse' or 'dense', got {route!r}")
    if not downsample:
        ops['identity'] = Features(llc_bytes)  # relu(x) == x: x updated in place
    else:
        ops['downsample'].move(2 * cout * h * w)  # relu of the projected identity
    per_cell = h * w / (rows * cols)  # pixels inside the map, edge cells cropped
    for name in ('gather', 'conv1', 'conv2', 'conv3+scatter'):
        ops.setdefault(name, Features(llc_bytes))
    for active in cells:
        if not active:
            continue
        inside, computed = active * per_cell, active * ph * pw
        taps = active * (ph + 2) * (pw + 2)
        gather = ops['gather']
        gather.add('sar_group_call', 1.0)
        gather.add('index_element', 2 * inside + taps)  # identity rows, canvas, windows
        gather.move(2 * inside * cout_g + (2 * inside * cin_g if downsample else 0)
                    + h * w * mid_g + 2 * inside * mid_g + 2 * taps * mid_g)
        ops['conv1'].add('gemm_mac', inside * cin_g * mid_g)
        ops['conv1'].move(inside * (cin_g + 3 * mid_g) + cin_g * mid_g)
        ops['conv2'].add(window_key(min(ph, pw)), 9 * mid_g * mid_g * computed)
        ops['conv2'].move(taps * mid_g + 3 * computed * mid_g + 9 * mid_g * mid_g
                          + (2 * inside * mid_g if computed > inside else 0))
        scatter = ops['conv3+scatter']
        scatter.add('index_element', inside)
        scatter.add('gemm_mac', inside * mid_g * cout_g)
        scatter.move(inside * mid_g + 6 * inside * cout_g + mid_g * cout_g)
    return {k: v.values for k, v in ops.items()}


def refinement_samples(points: Sequence[Mapping], llc_bytes: int):
    """``(features, seconds)`` of timed SAR refinement blocks (the calibration's
    ``sar_blocks``: one dict per block, route and cell counts)."""
    return [(total_features(refinement_ops(
        llc_bytes, p['in_channels'], p['mid_channels'], p['out_channels'], p['h'], p['w'],
        p['groups'], p['mask_size'], p['cells'], tuple(p['guide']), p['route'],
        p.get('downsample', False))), p['seconds']) for p in points]


def _check_engine(hw: Hardware) -> Hardware:
    if hw.engine is None:
        raise ValueError(f'profile {hw.name!r} has no CPU engine model: SAR-ResNet is '
                         'predicted from a profile calibrated on this machine '
                         '(python tools/analysis/calibrate_latency.py)')
    return hw


def refinement_latency(hw: Hardware, cin: int, mid: int, cout: int, h: int, w: int,
                       groups: int, mask_size: int, rate: float,
                       guide: Tuple[int, int, int], downsample: bool = False,
                       route: Optional[str] = None) -> BlockLatency:
    """One refinement block with ``round(rate * cells)`` cells selected per group (as
    ``SARResNet.set_forced_activation``) on ``route``, or (None) on the cheaper one."""
    _check_engine(hw)
    rate = _check_rate(rate, 'rate')
    _, _, rows, cols = cell_grid(h, w, mask_size)
    cells = (int(round(rate * rows * cols)), ) * groups
    args = (hw.engine.llc_bytes, cin, mid, cout, h, w, groups, mask_size, cells, guide)
    routes = [_engine_block(hw, refinement_ops(*args, name, downsample), name)
              for name in (('sparse', 'dense') if route is None else (route, ))]
    return min(routes, key=lambda b: b.total)


def refinement_crossover(hw: Hardware, cin: int, mid: int, cout: int, h: int, w: int,
                         groups: int, mask_size: int, guide: Tuple[int, int, int],
                         downsample: bool = False) -> float:
    """The fraction of cells above which the engine model predicts the dense route of a
    refinement block faster than its sparse route (every group selecting as many
    cells): ``(P - 1) / cells`` for the smallest count P where the dense route wins,
    1.0 when the sparse route wins with every cell selected (what the dense fallback
    otherwise measures in the first forward)."""
    _check_engine(hw)
    _, _, rows, cols = cell_grid(h, w, mask_size)
    cells = rows * cols

    def dense_wins(active: int) -> bool:
        sparse, dense = (hw.engine.cost(total_features(refinement_ops(
            hw.engine.llc_bytes, cin, mid, cout, h, w, groups, mask_size, (active, ) * groups,
            guide, route, downsample))) for route in ('sparse', 'dense'))
        return dense < sparse

    return crossover_rate(dense_wins, cells)


@dataclass(frozen=True)
class SARStageLatency:
    """One SAR stage: the dense parts (transition, base branch, projections, fusion)
    and the refinement blocks, each a :class:`BlockLatency`."""
    dense: Tuple[BlockLatency, ...]
    refine: Tuple[BlockLatency, ...]

    @property
    def total(self) -> float:
        return sum(b.total for b in self.dense + self.refine)

    @property
    def routes(self) -> Tuple[str, ...]:
        return tuple(b.route for b in self.refine)


@dataclass(frozen=True)
class SARNetworkLatency:
    """Predicted SAR-ResNet backbone latency and its static twin's (seconds, stem
    included)."""
    hardware: str
    depth: int
    input_hw: Tuple[int, int]
    setting: SARSetting
    stem: Tuple[OpLatency, ...]
    stages: Tuple[SARStageLatency, ...]
    plain: Tuple[BlockLatency, ...]  # stage 4 (and any stage past the SAR ones)
    static: float

    @property
    def dynamic(self) -> float:
        return sum(op.total for op in self.stem) + sum(s.total for s in self.stages) \
            + sum(b.total for b in self.plain)

    @property
    def ratio(self) -> float:
        return self.dynamic / self.static

    def summary(self) -> str:
        lines = [f'SAR-ResNet-{self.depth} {self.input_hw[0]}x{self.input_hw[1]} on '
                 f'{self.hardware}: dynamic {self.dynamic * 1e3:.3f} ms, static (ResNet-'
                 f'{self.depth}) {self.static * 1e3:.3f} ms, ratio {self.ratio:.3f}']
        for i, s in enumerate(self.stages):
            lines.append(f'  stage {i + 1} (SAR) {s.total * 1e3:9.3f} ms, refinement routes '
                         + '-'.join(s.routes))
        lines.append(f'  plain stages {sum(b.total for b in self.plain) * 1e3:9.3f} ms')
        return '\n'.join(lines)


def _pool_bytes(llc, channels, h, w, pools):
    """The base branch's 3x3/2 average pools (memory-bound)."""
    op = Features(llc)
    for _ in range(pools):
        op.move(channels * h * w + channels * _half(h) * _half(w))
        h, w = _half(h), _half(w)
    return op, (h, w)


def _dense(hw: Hardware, name: str, op: Features) -> BlockLatency:
    return _engine_block(hw, {name: op.values})


def _sar_stage(hw, stage, cin, planes, h, w, stride, n_blocks, setting, rates):
    llc = hw.engine.llc_bytes
    groups, scale = setting.groups[stage], setting.base_scale[stage]
    alpha, beta, k = setting.alpha[stage], setting.beta[stage], setting.mask_size[stage]
    out = planes * EXPANSION
    dense = [static_block_latency(hw, cin, planes, out, h, w, stride, downsample=True)]
    h, w = _half(h, stride), _half(w, stride)
    base_planes = planes // alpha
    base_out = base_planes * EXPANSION
    pools, (bh, bw) = _pool_bytes(llc, out, h, w, max(int(math.log2(scale)) - 1, 0))
    dense.append(_dense(hw, 'base_pool', pools))
    base_stride = 1 if scale == 1 else 2
    dense.append(static_block_latency(hw, out, base_planes, base_out, bh, bw, base_stride,
                                      downsample=True))
    bh, bw = _half(bh, base_stride), _half(bw, base_stride)
    dense += [static_block_latency(hw, base_out, base_planes, base_out, bh, bw)
              for _ in range(n_blocks - 2)]
    refine_mid, refine_out = int(planes * beta), int(out * beta)
    refine = []
    for i in range(n_blocks - 1):
        block_in = out if i == 0 else refine_out
        refine.append(refinement_latency(hw, block_in, refine_mid, refine_out, h, w,
                                         groups, k, rates[i], (base_out, bh, bw),
                                         downsample=block_in != refine_out))
    for name, (ci, ph, pw) in (('refine_projection', (refine_out, h, w)),
                               ('base_projection', (base_out, bh, bw))):
        if ci != out:
            dense.append(_dense(hw, name, dense_conv(llc, ci, out, 1, ph, pw)))
    fusion = Features(llc)
    fusion.move(5 * out * h * w + 3 * out * bh * bw)  # in-place blend, ReLU; a * base
    dense.append(_dense(hw, 'fusion', fusion))
    return SARStageLatency(tuple(dense), tuple(refine)), out, (h, w)


def predict_sar_resnet(hw: Union[Hardware, str], depth: int = 50,
                       input_hw: Tuple[int, int] = (800, 1216),
                       setting: Union[str, SARSetting] = 'G2s2a2b1',
                       mask_size: Union[int, Sequence[int]] = (7, 7, 2),
                       rates: Union[float, Sequence] = 0.5) -> SARNetworkLatency:
    """Predicted latency of SAR-ResNet-``depth`` (mmdet layout, ``style='pytorch'``)
    and of the plain ResNet, on a profile calibrated on this CPU.

    Args:
        hw (Hardware | str): a CPU profile with an engine model (``'cpu'``).
        depth (int): 50 or 101. Default: 50.
        input_hw (tuple[int, int]): input height and width. Default: (800, 1216).
        setting (str | SARSetting): ``'G<g>s<s>a<alpha>b<beta>'``. Default: 'G2s2a2b1'.
        mask_size: K per SAR stage (one int or 3). Default: (7, 7, 2).
        rates: the fraction of cells every refinement block selects per group: one
            number, or 3 per-stage entries (a number or a list per refinement block).
    """
    hw = _check_engine(load_profile(hw) if isinstance(hw, str) else hw)
    if depth not in SAR_DEPTHS:
        raise ValueError(f'SAR-ResNet depth {depth!r}: the engine model has the bottleneck '
                         f'depths {sorted(SAR_DEPTHS)}')
    if not isinstance(setting, SARSetting):
        setting = SARSetting.parse(setting, mask_size)
    layout = BackboneLayout(depth, tuple(input_hw))
    blocks = SAR_DEPTHS[depth]
    block_rates = _per_block(rates, [n - 1 for n in blocks[:SAR_STAGES]], 'rates', _check_rate)
    h, w = layout.stem_hw()
    channels, stages = STEM_CHANNELS, []
    for stage in range(SAR_STAGES):
        planes = STEM_CHANNELS * 2 ** stage
        stride = layout.strides[stage]
        sar, channels, (h, w) = _sar_stage(hw, stage, channels, planes, h, w, stride,
                                           blocks[stage], setting, block_rates[stage])
        stages.append(sar)
    twin = [(b.stage, static_block_latency(hw, b.in_channels, b.mid_channels, b.out_channels,
                                           *b.in_hw, b.stride, b.downsample))
            for b in layout.blocks()]  # the plain ResNet; its stage 4 is SAR-ResNet's too
    plain = tuple(block for stage, block in twin if stage >= SAR_STAGES)
    stem = _stem(hw, layout)
    static = sum(op.total for op in stem) + sum(block.total for _, block in twin)
    return SARNetworkLatency(hw.name, depth, tuple(input_hw), setting, stem, tuple(stages),
                             plain, static)


def predict_sar_config(hw: Union[Hardware, str], cfg: Mapping,
                       input_hw: Optional[Tuple[int, int]] = None,
                       rates: Union[float, Sequence] = 0.5) -> SARNetworkLatency:
    """:func:`predict_sar_resnet` for the ``SARResNet`` backbone of an mmdet/mmseg config
    (a mapping, as ``Config.fromfile`` gives); the input size from the test pipeline
    unless given."""
    backbone = dict(cfg['model']['backbone'])
    if backbone.get('type') != 'SARResNet':
        raise ValueError(f"the config's backbone is {backbone.get('type')!r}, not SARResNet")
    if backbone.get('sar_setting') is None:
        raise ValueError('the SAR predictor reads the backbone\'s sar_setting '
                         "(e.g. 'G2s2a2b1'); give it in the config")
    if tuple(backbone.get('strides', (1, 2, 2, 2))) != (1, 2, 2, 2) \
            or any(d != 1 for d in backbone.get('dilations', (1, 1, 1, 1))):
        raise ValueError('the SAR predictor models the detection layout (strides 1, 2, 2, '
                         '2, no dilation)')
    input_hw = input_size_from_config(cfg) if input_hw is None else tuple(input_hw)
    return predict_sar_resnet(hw, backbone.get('depth', 50), input_hw,
                              backbone['sar_setting'], backbone.get('mask_size', (7, 7, 2)),
                              rates)
