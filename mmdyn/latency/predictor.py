"""Latency of the operators of one LAS bottleneck block on a :class:`Hardware` model.

Han et al., "Latency-aware Spatial-wise Dynamic Networks", NeurIPS 2022, Sec. 3.3 and
Appendix A. An operator is split into tiles; the PEs run the tiles in waves, each tile
moving its weights, inputs and outputs between the on-chip global buffer (L2) and the
PE, while the whole operator moves its data once between DRAM and L2. The operator's
latency is its computation latency combined with its data-movement latency
(Appendix A: their sum) plus a fixed launch cost. The tile shape is the one of a
candidate set that minimises that latency (Appendix A's exhaustive search).

The formulas follow the authors' simulator (LeapLabTHU/LAUDNet ``DyNetSimulator``,
commit b53b980) where the paper leaves a detail open; docs/latency_predictor.md lists
them. All counts are fp32 elements; times are seconds.

A dynamic block (Sec. 3.4, Fig. 2 bottom; Appendix B.1) runs: the masker fused with
conv1 (one 1x1 conv with C+1 outputs) or, when cheaper, a separate 2-output masker and a
dynamic conv1; conv2 gathering its input patches (with halo) from the dense map; conv3
on the dense patch buffer; a scatter-add of the patches onto the residual.
"""
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional, Tuple

import numpy as np

from . import engine as cpu_engine
from .hardware import Hardware

MAX_POW2_TILE = 128  # largest power-of-two tile candidate (the simulator's 2**7)
MAX_SPLIT = 8  # near-even splits ceil(n / i) and small sizes are tried for i < 8
PATCH_BATCH_SPAN = 256  # dynamic convs search the patches-per-tile among splits of 256


@dataclass(frozen=True)
class OpLatency:
    """One operator: ``total = combine(compute, memory) + launch`` (seconds)."""

    name: str
    compute: float
    memory: float
    launch: float
    total: float
    tile: Tuple[int, ...] = ()  # (T_C, T_H, T_W) or (T_P, T_C, T_H, T_W); () if none


@dataclass(frozen=True)
class BlockLatency:
    """The operators of one block and their sum. ``fused`` tells, for a dynamic block,
    whether the masker was fused with conv1 (None for a static block); ``route``, for a
    dynamic block on a CPU engine model, which route mmdyn would run (``'sparse'`` or
    ``'dense'``, see :func:`dynamic_block_latency`), else None."""

    ops: Tuple[OpLatency, ...]
    fused: Optional[bool] = None
    route: Optional[str] = None

    @property
    def total(self) -> float:
        return sum(op.total for op in self.ops)

    def as_dict(self) -> Dict[str, float]:
        out = {op.name: op.total for op in self.ops}
        out['total'] = self.total
        return out


# ---------------------------------------------------------------- small helpers

def tile_candidates(n: int, pow2_limit: int = MAX_POW2_TILE) -> np.ndarray:
    """Tile sizes tried along a dimension of length ``n`` (Appendix A's search space).

    The paper speaks of powers of two; the simulator tries the powers of two up to
    ``min(128, 2n)``, the near-even splits ``ceil(n / i)`` for ``1 <= i < min(n, 8)``
    and every size in ``[2, min(n, 8))``; so do we.

    Order matters: equally fast tiles are common (e.g. 37 or 128 patches per tile can
    cost exactly the same at the mean patch count, and very differently at a given r),
    and the simulator keeps the first one it visits. It visits the members of a Python
    set filled in the order above, i.e. in CPython's hash-table order, not sorted. We
    fill a set the same way, so that ties resolve as in the simulator."""
    pow2, p = [], 1
    while p <= min(pow2_limit, 2 * n):
        pow2.append(p)
        p *= 2
    splits = []
    for i in range(1, min(n, MAX_SPLIT)):
        if -(-n // i) not in splits:
            splits.append(-(-n // i))
    small = list(range(2, min(n, MAX_SPLIT)))
    return np.array(list(set(pow2 + splits + small)), dtype=np.float64)


def _cdiv(a, b):
    return np.ceil(np.divide(a, b))


def padding_efficiency(x, quantum):
    """Useful fraction when ``x`` items are processed in chunks of ``quantum``."""
    return np.divide(x, _cdiv(x, quantum) * quantum)


def access_efficiency(run, gap, quantum):
    """Useful fraction of the bandwidth when reading runs of ``run`` contiguous fp32
    elements separated by ``gap`` elements, the memory serving ``quantum`` contiguous
    elements per request (Appendix A: small, scattered transfers are inefficient)."""
    run = np.asarray(run, dtype=np.float64)
    gap = np.maximum(np.asarray(gap, dtype=np.float64), 0.0)
    return np.where(run > quantum, padding_efficiency(run, quantum),
                    np.where(run + gap > quantum, run / quantum, run / (run + gap)))


def num_patches(r: float, out_h: int, out_w: int, size: int) -> int:
    """P = ceil(r * ceil(H/S) * ceil(W/S)): the active S x S patches at rate r."""
    return math.ceil(r * math.ceil(out_h / size) * math.ceil(out_w / size))


def _out_size(size: int, stride: int) -> int:
    """Output length of an odd-kernel conv padded by (k - 1) / 2."""
    return (size - 1) // stride + 1


def _combine(hw: Hardware, compute, memory):
    return compute + memory if hw.latency_mode == 'add' else np.maximum(compute, memory)


def _waves(hw: Hardware, n_tiles):
    """Rounds of tiles when ``num_pes`` PEs each take one tile per round."""
    return _cdiv(n_tiles, hw.num_pes)


def _op(hw: Hardware, name: str, compute: float, memory: float, tile=()) -> OpLatency:
    compute, memory = float(compute), float(memory)
    return OpLatency(name, compute, memory, hw.launch_time,
                     float(_combine(hw, compute, memory)) + hw.launch_time,
                     tuple(int(t) for t in tile))


def _grid(*axes):
    """Broadcastable views of 1-D candidate arrays (one axis each)."""
    k = len(axes)
    return [a.reshape([-1 if i == j else 1 for j in range(k)]) for i, a in enumerate(axes)]


def _best(latency, axes):
    """The first tile, in the search's visiting order (nested loops over ``axes``, the
    last innermost), whose latency is the smallest (to float rounding)."""
    flat = latency.ravel()
    first = int(np.flatnonzero(flat <= flat.min() * (1 + 1e-12))[0])
    return tuple(int(a[i]) for a, i in zip(axes, np.unravel_index(first, latency.shape)))


# ---------------------------------------------------------------- static operators

def _static_conv_cost(hw, cin, cout, in_h, in_w, k, stride, groups, tc, th, tw):
    """(compute, memory) of a dense conv for tile(s) T_C x T_H x T_W of its output."""
    out_h, out_w = _out_size(in_h, stride), _out_size(in_w, stride)
    b, cin_g = hw.batch_size, cin // groups
    n_tiles = _cdiv(cout, tc) * _cdiv(out_h, th) * _cdiv(out_w, tw)
    # Per tile, L2 -> PE: its weights, its input window (with the k - 1 halo; the
    # simulator scales the halo'd tile by the stride) and its outputs. A tile wider
    # than one group's outputs reads the input of every group it spans.
    tile_weights = tc * cin_g * k * k
    tile_input = _cdiv(tc, cout // groups) * cin_g * ((th + k - 1) * stride) \
        * ((tw + k - 1) * stride)
    tile_output = tc * th * tw
    on_chip = (tile_weights + b * (tile_input + tile_output)) * n_tiles
    # DRAM <-> L2: weights, input map and output map once each.
    off_chip = cout * cin_g * k * k + b * (cin * in_h * in_w + cout * out_h * out_w)
    # Rows of T_W elements out of rows of out_w: strided L2 reads.
    row_eff = access_efficiency(tw, out_w - tw, hw.access_quantum)
    memory = off_chip / hw.dram_rate + on_chip / (hw.l2_rate * row_eff)
    # A PE computes T_C * T_H * T_W outputs, each of cin_g * k^2 MACs, with its
    # fp32_units lanes in steps of pe_quantum outputs (Appendix A).
    macs = tc * th * tw * cin_g * k * k * b
    pe_time = macs / (hw.frequency * hw.fp32_units
                      * padding_efficiency(tc * th * tw, hw.pe_quantum))
    return pe_time * _waves(hw, n_tiles), memory


@lru_cache(maxsize=None)
def _static_conv(hw, cin, cout, in_h, in_w, k, stride, groups):
    out_h, out_w = _out_size(in_h, stride), _out_size(in_w, stride)
    axes = (tile_candidates(cout), tile_candidates(out_h), tile_candidates(out_w))
    compute, memory = _static_conv_cost(hw, cin, cout, in_h, in_w, k, stride, groups,
                                        *_grid(*axes))
    tile = _best(_combine(hw, compute, memory), axes)
    return _static_conv_cost(hw, cin, cout, in_h, in_w, k, stride, groups, *tile) + (tile, )


def static_conv(hw: Hardware, cin: int, cout: int, in_h: int, in_w: int, k: int = 1,
                stride: int = 1, groups: int = 1, name: str = 'conv') -> OpLatency:
    """A dense k x k conv (padding (k - 1) / 2) on a ``cin x in_h x in_w`` map."""
    compute, memory, tile = _static_conv(hw, cin, cout, in_h, in_w, k, stride, groups)
    return _op(hw, name, compute, memory, tile)


def _add_cost(hw, c, h, w, tc, th, tw):
    n_tiles = _cdiv(c, tc) * _cdiv(h, th) * _cdiv(w, tw)
    tile = tc * th * tw
    # The simulator charges an element-wise op's traffic (two reads, one write per
    # element of every tile, partial tiles counted whole) at the DRAM rate.
    memory = 3 * tile * n_tiles * hw.batch_size / hw.dram_rate
    pe_time = tile / (hw.frequency * hw.fp32_units * padding_efficiency(tile, hw.pe_quantum))
    return pe_time * _waves(hw, n_tiles) * hw.batch_size, memory


@lru_cache(maxsize=None)
def _add(hw, c, h, w):
    axes = (tile_candidates(c), tile_candidates(h), tile_candidates(w))
    compute, memory = _add_cost(hw, c, h, w, *_grid(*axes))
    tile = _best(_combine(hw, compute, memory), axes)
    return _add_cost(hw, c, h, w, *tile) + (tile, )


def elementwise_add(hw: Hardware, c: int, h: int, w: int, name: str = 'add') -> OpLatency:
    """The residual addition of a static block."""
    compute, memory, tile = _add(hw, c, h, w)
    return _op(hw, name, compute, memory, tile)


def max_pool(hw: Hardware, c: int, in_h: int, in_w: int, k: int = 3, stride: int = 2,
             name: str = 'maxpool') -> OpLatency:
    """The stem's max pooling. Not in the simulator; mmdyn's own, memory-bound model:
    DRAM moves the input and the output once, L2 serves the k^2 window reads of every
    output and its write; one comparison per window element, all PEs busy."""
    b = hw.batch_size
    out = c * _out_size(in_h, stride) * _out_size(in_w, stride)
    memory = b * (c * in_h * in_w + out) / hw.dram_rate + b * out * (k * k + 1) / hw.l2_rate
    compute = b * out * k * k / hw.peak_macs
    return _op(hw, name, compute, memory)


# ---------------------------------------------------------------- dynamic operators

def _dynamic_conv_cost(hw, cin, cout, in_h, in_w, k, stride, size, gathered, patches,
                       tp, tc, th, tw):
    """(compute, memory) of a conv computing ``patches`` output patches of
    ``size x size`` (Appendix A). A tile is T_P patches x T_C channels x T_H x T_W
    pixels of a patch; each tile loops over all the patches in batches of T_P, so the
    PEs share the work only across channel and intra-patch splits."""
    b = hw.batch_size
    n_tiles = _cdiv(cout, tc) * _cdiv(size, th) * _cdiv(size, tw)
    # L2 -> PE per tile: weights once, then per patch its halo'd input and output.
    tile_weights = tc * cin * k * k
    tile_input = _cdiv(tc, cout) * cin * ((th + k - 1) * stride) * ((tw + k - 1) * stride) \
        * patches
    tile_output = tc * th * tw * patches
    on_chip = (tile_weights + b * (tile_input + tile_output)) * n_tiles
    # DRAM <-> L2: a conv reading a gathered patch buffer reads P halo'd patches; one
    # indexing the dense map (gather fused in, Sec. 3.4) reads the whole map.
    if gathered:
        dram_input = patches * cin * ((size + k - 1) * stride) ** 2
    else:
        dram_input = cin * in_h * in_w
    off_chip = cout * cin * k * k + b * (dram_input + patches * cout * size * size)
    # The simulator takes the L2 access efficiency of dynamic convs as 1.
    memory = off_chip / hw.dram_rate + on_chip / hw.l2_rate
    lanes = tc * th * tw * tp
    batch_time = lanes * cin * k * k / (
        hw.frequency * hw.fp32_units * padding_efficiency(lanes * b, hw.pe_quantum))
    compute = batch_time * _cdiv(patches, tp) * b * _waves(hw, n_tiles)  # 0 when P = 0
    return compute, memory


@lru_cache(maxsize=None)
def _dynamic_conv_tile(hw, cin, cout, in_h, in_w, k, stride, size, gathered):
    """The tile of a dynamic conv. As in the simulator, it is chosen once per shape at
    the mean patch count (N + 1) / 2 over all possible counts 1..N, so the schedule
    does not depend on the activation rate."""
    n = math.ceil(_out_size(in_h, stride) / size) * math.ceil(_out_size(in_w, stride) / size)
    axes = (tile_candidates(PATCH_BATCH_SPAN), tile_candidates(cout),
            tile_candidates(size), tile_candidates(size))
    compute, memory = _dynamic_conv_cost(hw, cin, cout, in_h, in_w, k, stride, size,
                                         gathered, (n + 1) / 2, *_grid(*axes))
    return _best(_combine(hw, compute, memory), axes)


@lru_cache(maxsize=None)
def _dynamic_conv(hw, cin, cout, in_h, in_w, k, stride, size, gathered, patches):
    tile = _dynamic_conv_tile(hw, cin, cout, in_h, in_w, k, stride, size, gathered)
    return _dynamic_conv_cost(hw, cin, cout, in_h, in_w, k, stride, size, gathered,
                              patches, *tile) + (tile, )


def dynamic_conv(hw: Hardware, cin: int, cout: int, in_h: int, in_w: int, k: int,
                 size: int, patches: int, stride: int = 1, gathered: bool = False,
                 name: str = 'dynamic_conv') -> OpLatency:
    """A conv computing ``patches`` active ``size x size`` output patches. ``gathered``:
    its input is a buffer of the gathered patches (with halo), else it indexes the
    dense ``cin x in_h x in_w`` map itself."""
    compute, memory, tile = _dynamic_conv(hw, cin, cout, in_h, in_w, k, stride, size,
                                          bool(gathered), patches)
    return _op(hw, name, compute, memory, tile)


def _scatter_add_cost(hw, c, h, w, size, patches, tp, tc, th, tw):
    b = hw.batch_size
    n_tiles = _cdiv(c, tc) * _cdiv(size, th) * _cdiv(size, tw)
    # Per tile and patch: read the patch and the residual, write the sum.
    on_chip = 3 * tc * th * tw * patches * n_tiles * b
    # DRAM: the patch buffer, and the residual map read and written in full (the
    # residual is a dense map), so the op costs C*H*W traffic even at r = 0.
    off_chip = b * (patches * c * size * size + 2 * c * h * w)
    row_eff = access_efficiency(tw, size - tw, hw.access_quantum)
    memory = off_chip / hw.dram_rate + on_chip / (hw.l2_rate * row_eff)
    lanes = tc * th * tw * tp
    batch_time = lanes / (hw.frequency * hw.fp32_units
                          * padding_efficiency(lanes * b, hw.pe_quantum))
    compute = batch_time * _cdiv(patches, tp) * b * _waves(hw, n_tiles)
    return compute, memory


@lru_cache(maxsize=None)
def _scatter_add(hw, c, h, w, size, patches):
    n = math.ceil(h / size) * math.ceil(w / size)
    # Unlike the convs, the simulator searches the patch batch among splits of N.
    axes = (tile_candidates(n), tile_candidates(c), tile_candidates(size),
            tile_candidates(size))
    compute, memory = _scatter_add_cost(hw, c, h, w, size, (n + 1) / 2, *_grid(*axes))
    tile = _best(_combine(hw, compute, memory), axes)
    return _scatter_add_cost(hw, c, h, w, size, patches, *tile) + (tile, )


def scatter_add(hw: Hardware, c: int, h: int, w: int, size: int, patches: int,
                name: str = 'scatter_add') -> OpLatency:
    """Adds ``patches`` computed ``size x size`` patches onto the ``c x h x w``
    residual (the block output), fused into one operator (Sec. 3.4)."""
    compute, memory, tile = _scatter_add(hw, c, h, w, size, patches)
    return _op(hw, name, compute, memory, tile)


def masker_conv1(hw: Hardware, cin: int, mid: int, h: int, w: int, size: int,
                 r: float) -> Tuple[Tuple[OpLatency, ...], bool]:
    """The masker and conv1, fused or not, whichever is predicted faster (Sec. 3.4,
    Appendix B.1). Fused: one dense 1x1 conv with ``mid + 1`` outputs (the masker's
    two logits collapse into one channel by Eq. 3). Unfused: a dense 2-output masker,
    then conv1 on the active patches only, indexing the dense input. As in the
    simulator, the unfused conv1 counts its patches on its own (input-resolution) map,
    and the masker's pooling, the index building and conv1's halo are not modelled.
    Returns (operators, fused)."""
    fused = (static_conv(hw, cin, mid + 1, h, w, 1, name='masker+conv1'), )
    unfused = (static_conv(hw, cin, 2, h, w, 1, name='masker'),
               dynamic_conv(hw, cin, mid, h, w, 1, size, num_patches(r, h, w, size),
                            name='conv1'))
    if sum(op.total for op in unfused) < fused[0].total:
        return unfused, False
    return fused, True


# ---------------------------------------------------------------- blocks

def _check_block_args(in_channels, mid_channels, out_channels, h, w, stride,
                      size=1, r=0.0):
    for name, value in (('in_channels', in_channels), ('mid_channels', mid_channels),
                        ('out_channels', out_channels), ('H', h), ('W', w),
                        ('stride', stride), ('S', size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
        raise ValueError(f'activation rate r must be a number in [0, 1], got {r!r}')


def _wants_downsample(in_channels, out_channels, stride, downsample):
    return (in_channels != out_channels or stride != 1) if downsample is None \
        else bool(downsample)


_FIXED_TERMS = ('sparse_call', 'dense_call', 'index_element')


def _engine_block(hw: Hardware, ops, route: Optional[str] = None) -> BlockLatency:
    """A block predicted by a CPU profile's fitted engine model (:mod:`.engine`):
    per operator, compute = the MAC terms, memory = the byte terms, launch = the
    per-call and per-index terms."""
    out = []
    for name, features in ops.items():
        total = hw.engine.cost(features)
        memory = hw.engine.cost({k: v for k, v in features.items() if k.endswith('_byte')})
        fixed = hw.engine.cost({k: v for k, v in features.items() if k in _FIXED_TERMS})
        out.append(OpLatency(name, total - memory - fixed, memory, fixed, total))
    return BlockLatency(tuple(out), None if route is None else True, route)


def _engine_routes(hw: Hardware, in_channels, mid_channels, out_channels, H, W, S, patches,
                   stride, downsample) -> Tuple[BlockLatency, BlockLatency]:
    """(sparse executor, dense route) of a LAS bottleneck with ``patches`` active
    patches on a CPU engine model (:mod:`.engine`)."""
    oh, ow = _out_size(H, stride), _out_size(W, stride)
    args = (hw.engine.llc_bytes, in_channels, mid_channels, out_channels, H, W)
    ds = _wants_downsample(in_channels, out_channels, stride, downsample)
    partial = patches < math.ceil(oh / S) * math.ceil(ow / S)
    return (_engine_block(hw, cpu_engine.sparse_block_ops(*args, S, patches, stride, ds),
                          'sparse'),
            _engine_block(hw, cpu_engine.dense_route_ops(*args, stride, ds, partial),
                          'dense'))


def static_block_latency(hw: Hardware, in_channels: int, mid_channels: int,
                         out_channels: int, H: int, W: int, stride: int = 1,
                         downsample: Optional[bool] = None) -> BlockLatency:
    """The dense bottleneck on a ``in_channels x H x W`` input (stride on conv2, as
    in mmdet's ``style='pytorch'``): conv1, conv2, conv3, the residual add and, when
    ``downsample`` (default: channels or stride change), the 1x1 projection."""
    _check_block_args(in_channels, mid_channels, out_channels, H, W, stride)
    if hw.engine is not None:
        return _engine_block(hw, cpu_engine.dense_block_ops(
            hw.engine.llc_bytes, in_channels, mid_channels, out_channels, H, W, stride,
            _wants_downsample(in_channels, out_channels, stride, downsample)))
    oh, ow = _out_size(H, stride), _out_size(W, stride)
    ops = [static_conv(hw, in_channels, mid_channels, H, W, 1, name='conv1'),
           static_conv(hw, mid_channels, mid_channels, H, W, 3, stride, name='conv2'),
           static_conv(hw, mid_channels, out_channels, oh, ow, 1, name='conv3'),
           elementwise_add(hw, out_channels, oh, ow)]
    if _wants_downsample(in_channels, out_channels, stride, downsample):
        ops.append(static_conv(hw, in_channels, out_channels, H, W, 1, stride,
                               name='downsample'))
    return BlockLatency(tuple(ops))


def dynamic_block_latency(hw: Hardware, in_channels: int, mid_channels: int,
                          out_channels: int, H: int, W: int, S: int, r: float,
                          stride: int = 1, downsample: Optional[bool] = None,
                          dense_route: bool = False) -> BlockLatency:
    """The LAS bottleneck computing a fraction ``r`` of its ``S x S`` output patches
    (P = ceil(r * ceil(H'/S) * ceil(W'/S)) on the H' x W' output): masker+conv1,
    gather-conv2, conv3, scatter-add, and the dense projection when ``downsample``.

    With a CPU engine model (``hw.engine``) the operators are mmdyn's sparse executor's
    (:mod:`.engine`); ``dense_route=True`` then returns the cheaper of the sparse
    executor and the dense route, as mmdyn's dense fallback chooses
    (``BlockLatency.route`` says which). The GPU model has no dense route and ignores
    the flag."""
    _check_block_args(in_channels, mid_channels, out_channels, H, W, stride, S, r)
    oh, ow = _out_size(H, stride), _out_size(W, stride)
    patches = num_patches(r, oh, ow, S)
    if hw.engine is not None:
        sparse, dense = _engine_routes(hw, in_channels, mid_channels, out_channels, H, W, S,
                                       patches, stride, downsample)
        if not dense_route or patches == 0:
            return sparse
        return dense if dense.total < sparse.total else sparse
    first, fused = masker_conv1(hw, in_channels, mid_channels, H, W, S, r)
    ops = list(first) + [
        dynamic_conv(hw, mid_channels, mid_channels, H, W, 3, S, patches, stride,
                     gathered=False, name='conv2'),
        dynamic_conv(hw, mid_channels, out_channels, oh, ow, 1, S, patches,
                     gathered=True, name='conv3'),
        scatter_add(hw, out_channels, oh, ow, S, patches)]
    if _wants_downsample(in_channels, out_channels, stride, downsample):
        ops.append(static_conv(hw, in_channels, out_channels, H, W, 1, stride,
                               name='downsample'))
    return BlockLatency(tuple(ops), fused)


def dense_route_crossover(hw: Hardware, in_channels: int, mid_channels: int,
                          out_channels: int, H: int, W: int, S: int, stride: int = 1,
                          downsample: Optional[bool] = None) -> float:
    """The activation rate above which a CPU profile's engine model predicts mmdyn's
    dense route faster than its sparse executor for this block (what
    ``mmdyn.models.backbones.dense_fallback`` otherwise measures in the first forward):
    ``(P - 1) / cells`` for the smallest patch count P where the dense route wins, 1.0
    when the sparse executor wins with every patch on."""
    if hw.engine is None:
        raise ValueError(f'profile {hw.name!r} has no CPU engine model: the dense-route '
                         'crossover is predicted from a profile calibrated on this machine '
                         '(python tools/analysis/calibrate_latency.py)')
    _check_block_args(in_channels, mid_channels, out_channels, H, W, stride, S)
    oh, ow = _out_size(H, stride), _out_size(W, stride)
    cells = math.ceil(oh / S) * math.ceil(ow / S)

    def dense_wins(patches: int) -> bool:
        sparse, dense = _engine_routes(hw, in_channels, mid_channels, out_channels, H, W, S,
                                       patches, stride, downsample)
        return dense.total < sparse.total

    return crossover_rate(dense_wins, cells)


def crossover_rate(dense_wins, cells: int) -> float:
    """``(P - 1) / cells`` for the smallest count P of active patches (cells) for which
    ``dense_wins(P)``, found by bisection (the sparse cost grows with P, the dense cost
    hardly moves); 1.0 when the sparse route wins with all ``cells`` active."""
    if not dense_wins(cells):
        return 1.0
    low, high = 0, cells  # sparse wins at low (0 patches: nothing to run), dense at high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if dense_wins(middle) else (middle, high)
    return (high - 1) / cells


def latency_ratio(hw: Hardware, in_channels: int, mid_channels: int, out_channels: int,
                  H: int, W: int, S: int, r: float, stride: int = 1,
                  downsample: Optional[bool] = None) -> float:
    """r_l = dynamic / static latency of one block (Sec. 4.2, Fig. 5)."""
    args = (hw, in_channels, mid_channels, out_channels, H, W)
    return dynamic_block_latency(*args, S, r, stride, downsample).total \
        / static_block_latency(*args, stride, downsample).total


_CACHED = (_static_conv, _add, _dynamic_conv_tile, _dynamic_conv, _scatter_add)


def clear_caches() -> None:
    """Forget every cached operator prediction."""
    for fn in _CACHED:
        fn.cache_clear()


def cache_info() -> Dict[str, int]:
    """Hits and misses summed over the operator caches."""
    infos = [fn.cache_info() for fn in _CACHED]
    return {'hits': sum(i.hits for i in infos), 'misses': sum(i.misses for i in infos)}
