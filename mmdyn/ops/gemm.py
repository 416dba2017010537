"""The products of the sparse executors, each with kernels chosen by measurement.

``gemm(rows, matrix, bias)`` is ``bias + rows @ matrix``, ``gemm_acc(out, rows,
matrix, bias, relu)`` is ``out += bias + rows @ matrix`` in place (then ReLU if asked:
a residual sum) and ``gemm_into(out, rows, matrix,
bias, relu)`` writes ``bias + rows @ matrix`` (ReLU'd if asked) into a given ``out``
(a slice of a larger buffer, so chunked products need no copy of their own), on
channels-last pixel rows ``[M, K]`` and a ``[K, N]`` weight matrix
(:class:`FoldedConv.matrix`). Two kernels compute each: MKL's ``addmm`` and oneDNN's
1x1 ``conv2d`` on the rows viewed as a channels-last ``[1, K, M, 1]`` map (no copy);
``gemm_acc`` and ``gemm_into`` have a third where torch ships it, oneDNN's convolution
with an ``add`` post-op accumulating straight into ``out`` (zeroed first for
``gemm_into``), ReLU fused: one pass over ``out`` instead of three. Which is faster
depends on the CPU, so :mod:`mmdyn.ops.kernel_choice` measures it per shape class
where the code runs.
The weights follow the activations' dtype (CPU autocast hands bf16 rows to fp32
folded weights).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .caching import build_outside_inference_mode, version_counter
from .kernel_choice import CHOOSER, CPU_FLOAT32, KernelOp, Serves
from .native import native_kernels
from .row_buffers import gather_rows

#: row-count classes: a choice is measured once per (class, K, N, dtype); the last
#: takes every larger count
ROW_CLASSES = (1024, 4096, 16384, 65536)
#: synthetic inputs for timing stay below this many elements (64 MB of fp32: whether
#: the operands still fit in the caches is what decides between kernels on large maps,
#: a stage-1 map at 800x1216 is 60800 pixel rows)
TIMING_ELEMENTS = 1 << 24


class DerivedWeights(dict):
    """Weights derived from a matrix for one kernel (transposed, or prepacked in
    oneDNN's blocked layout), rebuilt on demand: a copy or a pickle of a model carries
    none of them (oneDNN's packed tensors have no storage to copy)."""

    def __deepcopy__(self, memo):
        return DerivedWeights()

    def __reduce__(self):
        return (DerivedWeights, ())


def _derived(matrix: Tensor, kind, build, rebuild: bool = False):
    """``build(matrix)`` cached on the matrix (on its base when it is a view, such as
    ``grouped[0]``: a fresh view per call would otherwise redo the work on every
    forward), rebuilt when the matrix is modified in place; built outside inference
    mode (:mod:`.caching`)."""
    owner = matrix if matrix._base is None else matrix._base
    version = version_counter(owner)
    cache = owner.__dict__.get('_mmdyn_conv_weights')
    if not isinstance(cache, DerivedWeights):
        cache = owner.__dict__['_mmdyn_conv_weights'] = DerivedWeights()
    key = (kind, matrix.storage_offset(), tuple(matrix.shape), tuple(matrix.stride()))
    cached = cache.get(key)
    if rebuild or cached is None or cached[0] != version or version is None:
        cached = (version, build_outside_inference_mode(build, matrix))
        cache[key] = cached
    return cached[1]


def _conv_weight(matrix: Tensor) -> Tensor:
    """``[N, K, 1, 1]`` conv weight of a ``[K, N]`` matrix (cached)."""
    def build(m):
        weight = m.t().contiguous()
        return weight.view(*weight.shape, 1, 1)
    return _derived(matrix, 'conv', build)


def _packed_weight(matrix: Tensor, rows: int) -> Tensor:
    """The ``[N, K, 1, 1]`` weight prepacked in oneDNN's blocked layout for products of
    exactly ``rows`` pixel rows: a plain weight is reordered into that layout on every
    call, which costs as much as the product itself when the weight is large and the
    rows few (a 3x3 conv's gathered tile in stage 4: 9.4 MB of weight for a few hundred
    rows). The layout oneDNN expects depends on the row count (a weight packed for
    another count is reordered again, slower than a plain one), so one packing is kept
    per matrix, for the last row count and thread count (maps of one input size repeat
    theirs; a weight packed at 2 threads ran a 1-thread product at half speed)."""
    return packed_for(matrix, 'packed', rows, lambda m: _REORDER(
        _conv_weight(m), [0, 0], [1, 1], [1, 1], 1, [1, m.shape[0], rows, 1]))


def packed_for(weight: Tensor, kind, target, pack):
    """``pack(weight)``, a oneDNN packing for ``target`` (a row count, an input shape)
    at the current thread count, cached on ``weight`` (:func:`_derived`): one packing
    per ``kind``, rebuilt when the target or the thread count changes."""
    key = target, torch.get_num_threads()
    packed_key, packed = _derived(weight, kind, lambda w: (key, pack(w)))
    if packed_key != key:
        _, packed = _derived(weight, kind, lambda w: (key, pack(w)), rebuild=True)
    return packed


def _rows_as_map(rows: Tensor) -> Tensor:
    """``[M, K]`` contiguous rows as a channels-last ``[1, K, M, 1]`` map (a view)."""
    return rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def _map_as_rows(out: Tensor) -> Tensor:
    return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])


#: oneDNN's convolution itself: F.conv2d sends a 1x1 convolution of one image on one
#: thread to its generic (MKL im2col) path instead
_ONEDNN_CONV = torch.ops.aten.mkldnn_convolution if torch.backends.mkldnn.is_available() \
    else None


def _conv1x1(rows: Tensor, matrix: Tensor, bias) -> Tensor:
    if rows.shape[0] == 0:  # oneDNN refuses empty maps
        return rows.new_zeros(0, matrix.shape[1])
    if _ONEDNN_CONV is not None and CPU_FLOAT32.covers(rows.device, rows.dtype):
        return _map_as_rows(_ONEDNN_CONV(_rows_as_map(rows), _conv_weight(matrix), bias,
                                         [0, 0], [1, 1], [1, 1], 1))
    return _map_as_rows(F.conv2d(_rows_as_map(rows), _conv_weight(matrix), bias))


#: oneDNN's convolution on prepacked weights (torch's inductor ops), and the packing
_POINTWISE = getattr(getattr(torch.ops, 'mkldnn', None), '_convolution_pointwise', None)
_REORDER = getattr(getattr(torch.ops, 'mkldnn', None), '_reorder_convolution_weight', None)


def _conv1x1_packed(rows: Tensor, matrix: Tensor, bias, unary: str = 'none') -> Tensor:
    """:func:`_conv1x1` on the prepacked weight (fp32; other dtypes take the plain
    weight), ``unary`` ``'relu'`` fusing the ReLU."""
    if rows.shape[0] == 0 or not CPU_FLOAT32.covers(rows.device, rows.dtype):
        out = _conv1x1(rows, matrix, bias)
        return out.relu_() if unary == 'relu' else out
    return _map_as_rows(_POINTWISE(_rows_as_map(rows), _packed_weight(matrix, rows.shape[0]),
                                   bias, [0, 0], [1, 1], [1, 1], 1, unary, [], None))


def _gemm_addmm(rows, matrix, bias):
    return torch.mm(rows, matrix) if bias is None else torch.addmm(bias, rows, matrix)


def _gemm_conv1x1(rows, matrix, bias):
    return _conv1x1(rows, matrix, bias)


def _acc_addmm(out, rows, matrix, bias, relu):
    out.addmm_(rows, matrix)
    if bias is not None:
        out.add_(bias)
    return out.relu_() if relu else out


def _acc_conv1x1(out, rows, matrix, bias, relu):
    out.add_(_conv1x1(rows, matrix, bias))
    return out.relu_() if relu else out


def _into_addmm(out, rows, matrix, bias, relu):
    if bias is None:
        torch.mm(rows, matrix, out=out)
    else:
        torch.addmm(bias, rows, matrix, out=out)
    return out.relu_() if relu else out


def _into_conv1x1(out, rows, matrix, bias, relu):
    product = _conv1x1(rows, matrix, bias)
    return torch.clamp_min(product, 0, out=out) if relu else out.copy_(product)


#: oneDNN convolution accumulating into its ``other`` argument (torch's inductor op)
_CONV_ADD_ = getattr(getattr(torch.ops, 'mkldnn', None), '_convolution_pointwise_', None)


def _acc_conv1x1_add(out, rows, matrix, bias, relu, packed: bool = False):
    """``out = relu?(out + bias + rows @ matrix)`` as one oneDNN convolution whose
    ``add`` post-op reads and writes ``out`` (fp32 only; other dtypes take the
    unfused convolution), on the plain or (``packed``) the prepacked weight."""
    if not CPU_FLOAT32.covers(rows.device, rows.dtype):
        return _acc_conv1x1(out, rows, matrix, bias, relu)
    if rows.shape[0]:  # oneDNN refuses empty maps
        weight = _packed_weight(matrix, rows.shape[0]) if packed else _conv_weight(matrix)
        _CONV_ADD_(_rows_as_map(out), _rows_as_map(rows), weight, bias,
                   [0, 0], [1, 1], [1, 1], 1, 'add', 1.0, 'relu' if relu else None, [], None)
    return out


def _acc_conv1x1_add_packed(out, rows, matrix, bias, relu):
    return _acc_conv1x1_add(out, rows, matrix, bias, relu, packed=True)


def _into_conv1x1_add(out, rows, matrix, bias, relu, packed: bool = False):
    if rows.shape[0] == 0:
        return out
    if not CPU_FLOAT32.covers(rows.device, rows.dtype):  # the fused op: fp32 CPU only
        return _into_conv1x1(out, rows, matrix, bias, relu)
    return _acc_conv1x1_add(out.zero_(), rows, matrix, bias, relu, packed)


def _into_conv1x1_add_packed(out, rows, matrix, bias, relu):
    return _into_conv1x1_add(out, rows, matrix, bias, relu, packed=True)


def _has_onednn_op(op, packed: bool = False) -> bool:
    """torch's inductor op ``op`` exists in this build and computes the product (the
    fused accumulation, or with ``packed`` the product on a prepacked weight)."""
    if op is None or not torch.backends.mkldnn.is_available() or (packed and _REORDER is None):
        return False
    try:
        rows, matrix, bias = torch.randn(5, 3), torch.randn(3, 4), torch.randn(4)
        start = torch.randn(5, 4)
        if op is _POINTWISE:
            return bool(torch.allclose(_conv1x1_packed(rows, matrix, bias, 'relu'),
                                       torch.addmm(bias, rows, matrix).relu(), atol=1e-5))
        out = start.clone()
        _acc_conv1x1_add(out, rows, matrix, bias, True, packed)
        return bool(torch.allclose(out, torch.addmm(bias + start, rows, matrix).relu(),
                                   atol=1e-5))
    except (RuntimeError, TypeError):
        return False


def count_class(count: int, limits) -> int:
    """The first of the ascending ``limits`` at or above ``count`` (the last takes every
    larger count): the size part of a shape class."""
    for limit in limits:
        if count <= limit:
            return limit
    return limits[-1]


def row_class(rows: int) -> int:
    return count_class(rows, ROW_CLASSES)


def _timing_inputs(with_out: bool, into: bool = False):
    def make(shape_class):
        dtype, rows, k, n = shape_class
        rows = max(64, min(rows, TIMING_ELEMENTS // (k + n)))
        dtype = getattr(torch, dtype)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(rows, k, generator=generator).to(dtype)
        matrix = torch.randn(k, n, generator=generator).to(dtype)
        if into:
            return torch.empty(rows, n, dtype=dtype), x, matrix, torch.zeros(n, dtype=dtype), True
        if with_out:
            return torch.zeros(rows, n, dtype=dtype), x, matrix, None, False
        return x, matrix, torch.zeros(n, dtype=dtype)
    return make


def onednn_candidates(has_op=_has_onednn_op):
    """``(gemm, gemm_acc, gemm_into)`` candidate tables: MKL's and the generic 1x1
    convolution everywhere, plus the internal oneDNN ops this build has and computes
    right with (``has_op`` probes them)."""
    gemm_candidates = {'addmm': _gemm_addmm, 'conv1x1': _gemm_conv1x1}
    acc = {'addmm': _acc_addmm, 'conv1x1': _acc_conv1x1}
    into = {'addmm': _into_addmm, 'conv1x1': _into_conv1x1}
    packed = has_op(_POINTWISE, packed=True)
    if packed:
        gemm_candidates['conv1x1_packed'] = _conv1x1_packed
    if has_op(_CONV_ADD_):
        acc['conv1x1_add'], into['conv1x1_add'] = _acc_conv1x1_add, _into_conv1x1_add
        if packed and has_op(_CONV_ADD_, packed=True):
            acc['conv1x1_add_packed'] = _acc_conv1x1_add_packed
            into['conv1x1_add_packed'] = _into_conv1x1_add_packed
    return gemm_candidates, acc, into


#: the 1x1 convolution: oneDNN's own op for float32 CPU rows, F.conv2d for the rest;
#: timed against MKL's product for float32 and bfloat16 (float16 and float64 take
#: the portable addmm without a measurement)
CONV1X1 = Serves(dtypes=frozenset({torch.float32, torch.bfloat16}))
#: what each candidate serves (oneDNN's internal ops: float32 CPU tensors only)
PRODUCT_SERVES = {'conv1x1': CONV1X1, 'conv1x1_packed': CPU_FLOAT32,
                  'conv1x1_add': CPU_FLOAT32, 'conv1x1_add_packed': CPU_FLOAT32}
_GEMM_CANDIDATES, _ACC_CANDIDATES, _INTO_CANDIDATES = onednn_candidates()
#: oneDNN's products on prepacked weights work in this build
HAS_PACKED = 'conv1x1_packed' in _GEMM_CANDIDATES
GEMM = CHOOSER.register(KernelOp('gemm', _GEMM_CANDIDATES, _timing_inputs(with_out=False),
                                 PRODUCT_SERVES))
GEMM_ACC = CHOOSER.register(KernelOp('gemm_acc', _ACC_CANDIDATES, _timing_inputs(with_out=True),
                                     PRODUCT_SERVES))
GEMM_INTO = CHOOSER.register(KernelOp('gemm_into', _INTO_CANDIDATES,
                                      _timing_inputs(with_out=True, into=True), PRODUCT_SERVES))


def _gather_then_gemm(table, taps, matrix, bias, relu=False, relu_table=False,
                      zero_past_end=False):
    outside = taps == table.shape[0] if zero_past_end else None
    if outside is not None:
        taps = taps.clamp(max=table.shape[0] - 1)
    gathered = F.embedding(taps.reshape(-1), table)  # one row gather, [n * T, C]
    if relu_table:
        gathered = gathered.relu_()
    if outside is not None:
        gathered.view(*taps.shape, table.shape[1]).masked_fill_(outside.unsqueeze(-1), 0.0)
    out = gemm(gathered.view(taps.shape[0], matrix.shape[0]), matrix, bias)
    return out.relu_() if relu else out


def _gather_gemm_native(table, taps, matrix, bias, relu=False, relu_table=False,
                        zero_past_end=False, onednn: str = 'plain'):
    """The gather fused into the product, tile by tile (mmdyn/ops/native), each tile
    multiplied by oneDNN's 1x1 convolution (``onednn``: ``'plain'`` weight, or
    ``'packed'`` once in oneDNN's layout), the ReLU applied to the tile while it is in
    cache; the PyTorch route where the native kernels are not built or the dtype is not
    float32."""
    kernels = native_kernels()
    if kernels is None or not CPU_FLOAT32.covers(table.device, table.dtype):
        return _gather_then_gemm(table, taps, matrix, bias, relu, relu_table, zero_past_end)
    tile = balanced_tile(taps.shape[0], max(64, min(ONEDNN_GATHER_TILE,
                                                    ONEDNN_TILE_FLOATS // matrix.shape[0])))
    weight = _packed_weight(matrix, tile) if onednn == 'packed' else _conv_weight(matrix)
    return kernels.gather_gemm(table, taps, matrix, bias, relu, tile, weight, relu_table,
                               zero_past_end)


def balanced_tile(rows: int, tile: int) -> int:
    """The tile height the native gather-GEMM uses for ``rows`` output rows and a
    nominal ``tile``: tiles as many as a multiple of the threads, of equal height
    (gather_gemm.cpp computes the same; all tiles but perhaps the last then share the
    prepacked weight's row count)."""
    threads = torch.get_num_threads()
    tiles = -(-rows // tile)
    tiles = max(1, -(-tiles // threads) * threads)
    return max(1, -(-rows // tiles))


def _gather_gemm_native_packed(table, taps, matrix, bias, relu=False, relu_table=False,
                               zero_past_end=False):
    return _gather_gemm_native(table, taps, matrix, bias, relu, relu_table, zero_past_end,
                               onednn='packed')


def _gather_timing_inputs(shape_class):
    """At the class's row count (the gathered matrix capped at 128 MB), from a table
    2.5x as tall: whether the gathered rows still fit in cache is what decides between
    the two kernels, so the inputs are not shrunk to cache size."""
    dtype, rows, k, n, taps = shape_class
    rows = max(64, min(rows, (1 << 25) // k))  # the gathered matrix below 128 MB
    channels = k // taps
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)
    table = torch.randn(5 * rows // 2 + 1, channels, generator=generator).to(dtype)
    index = torch.randint(0, table.shape[0], (rows, taps), generator=generator)
    matrix = torch.randn(k, n, generator=generator).to(dtype)
    return table, index, matrix, torch.zeros(n, dtype=dtype)


#: output rows per task of the native gather-GEMM (its buffer: rows x T*C floats;
#: about: the kernel balances the tiles over the threads); oneDNN's product runs
#: faster on taller tiles (up to 2048 rows, the buffer below 8 MB: measured on the AMD
#: EPYC, 1.1-1.2x over 512 rows on 64-128 channels). MKL's product on 256-row tiles
#: won no shape class on this CPU at 2 threads, 1 thread or capped to AVX2 (2026-12-04,
#: docs/speed_engine.md) and is no longer a candidate.
ONEDNN_GATHER_TILE = 2048
ONEDNN_TILE_FLOATS = 1 << 21


def register_tiled_op(name: str, torch_route, native_plain, native_packed, make_inputs):
    """Register the op ``name``: its PyTorch route (the portable candidate) and, where
    torch has oneDNN, the native tiled kernel on the plain weight and, where the build
    packs weights, on the prepacked one (CPU float32 only)."""
    candidates = {'torch': torch_route}
    if torch.backends.mkldnn.is_available():
        candidates['native_onednn'] = native_plain
        if HAS_PACKED:
            candidates['native_onednn_packed'] = native_packed
    return CHOOSER.register(KernelOp(name, candidates, make_inputs,
                                     {n: CPU_FLOAT32 for n in candidates if n != 'torch'}))


GATHER_GEMM = register_tiled_op('gather_gemm', _gather_then_gemm, _gather_gemm_native,
                                _gather_gemm_native_packed, _gather_timing_inputs)


def has_separate_rows(table: Tensor) -> bool:
    """``table``'s rows are each contiguous and do not overlap (what the native
    gather-GEMM reads in place)."""
    return (table.stride(1) == 1 or table.shape[1] <= 1) and (
        table.shape[0] <= 1 or table.stride(0) >= table.shape[1])


def gather_gemm(table: Tensor, taps: Tensor, matrix: Tensor, bias: Optional[Tensor],
                relu: bool = False, relu_table: bool = False,
                zero_past_end: bool = False) -> Tensor:
    """``bias + concat_t(table[taps[:, t]]) @ matrix`` -> ``[n, N]`` (then ReLU if
    ``relu``): a convolution on
    gathered tap rows (``table`` ``[rows, C]``, ``taps`` ``[n, T]`` row ids, ``matrix``
    ``[T * C, N]``). Either the gather then one GEMM, or the native kernel gathering a
    tile at a time into a buffer that stays in cache; chosen by measurement per shape
    class like the other products. ``relu_table``: the rows are ReLU'd as they are
    gathered (``table`` is left as it is); ``zero_past_end``: a tap equal to the
    table's row count reads zeros (a conv's zero padding on a map with no zero row
    after it: ``zero_row`` of :func:`~mmdyn.ops.pixel_sampling.conv_tap_rows`). Rows
    that lie apart (a channel slice of a channels-last map) are read where they are."""
    if matrix.shape[0] != taps.shape[1] * table.shape[1]:
        raise ValueError(f'gather_gemm: matrix has {matrix.shape[0]} rows, taps x channels '
                         f'is {taps.shape[1]} x {table.shape[1]}')
    if not has_separate_rows(table):
        table = table.contiguous()
    matrix, bias = _follow(table, matrix).contiguous(), _follow(table, bias)
    shape = (dtype_name(table), row_class(taps.shape[0]),
             matrix.shape[0], matrix.shape[1], taps.shape[1])
    impl = CHOOSER.choose('gather_gemm', shape, table.device)
    return GATHER_GEMM.candidates[impl](table, taps.contiguous(), matrix, bias, relu,
                                        relu_table, zero_past_end)


def _acc_then_scatter(dest, source, pixels, rows, matrix, bias, relu=False, buffers=None):
    """The PyTorch route: the source rows gathered (into the slot ``'scatter'`` of
    ``buffers`` when given), the product accumulated onto them (:func:`gemm_acc`),
    the result copied to the destination rows."""
    updated = gather_rows(source, pixels, buffers, 'scatter')
    gemm_acc(updated, rows, matrix, bias, relu)
    return dest.index_copy_(0, pixels, updated)


def _scatter_gemm_native(dest, source, pixels, rows, matrix, bias, relu=False, buffers=None,
                         onednn: str = 'plain'):
    """The scatter fused into the product, tile by tile (mmdyn/ops/native): each tile
    multiplied by oneDNN's 1x1 convolution (``onednn``: ``'plain'`` or ``'packed'``
    weight) and added onto its destination rows while it is in cache; the PyTorch route
    where the native kernels are not built, the dtype is not float32 or an autograd
    graph is recorded (the kernel writes through pointers)."""
    kernels = native_kernels()
    records_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (dest, source, rows, matrix, bias))
    if kernels is None or not CPU_FLOAT32.covers(dest.device, dest.dtype) or records_graph:
        return _acc_then_scatter(dest, source, pixels, rows, matrix, bias, relu, buffers)
    tile = balanced_tile(rows.shape[0], max(64, min(ONEDNN_GATHER_TILE,
                                                    SCATTER_TILE_FLOATS // matrix.shape[1])))
    weight = _packed_weight(matrix, tile) if onednn == 'packed' else _conv_weight(matrix)
    return kernels.scatter_gemm_acc(dest, source, pixels, rows, matrix, bias, relu, tile,
                                    weight)


def _scatter_gemm_native_packed(dest, source, pixels, rows, matrix, bias, relu=False,
                                buffers=None):
    return _scatter_gemm_native(dest, source, pixels, rows, matrix, bias, relu, buffers,
                                onednn='packed')


def _scatter_timing_inputs(shape_class):
    """At the class's row count, onto a map 2.5x as tall (a block's identity at half
    its pixels), in place, ReLU fused."""
    dtype, rows, k, n = shape_class
    rows = max(64, min(rows, TIMING_ELEMENTS // (k + 3 * n)))
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)
    table = torch.randn(5 * rows // 2, n, generator=generator).to(dtype)
    pixels = torch.randperm(table.shape[0], generator=generator)[:rows]
    values = torch.randn(rows, k, generator=generator).to(dtype)
    matrix = torch.randn(k, n, generator=generator).to(dtype)
    return table, table, pixels, values, matrix, torch.zeros(n, dtype=dtype), True


#: floats of a native scatter-GEMM tile's product (2 MB: it is added onto scattered
#: rows right after, from cache)
SCATTER_TILE_FLOATS = 1 << 19
SCATTER_GEMM_ACC = register_tiled_op('scatter_gemm_acc', _acc_then_scatter,
                                     _scatter_gemm_native, _scatter_gemm_native_packed,
                                     _scatter_timing_inputs)


def scatter_gemm_acc(dest: Tensor, source: Tensor, pixels: Tensor, rows: Tensor,
                     matrix: Tensor, bias: Optional[Tensor], relu: bool = False,
                     buffers=None) -> Tensor:
    """``dest[pixels] = source[pixels] + bias + rows @ matrix`` (then ReLU if ``relu``) on
    ``[P, N]`` pixel rows (``source`` may be ``dest``; each a map's rows or a column
    slice of them, one group's channels; ``pixels`` distinct, one per row of ``rows``
    ``[n, K]``): a block's last 1x1 conv added to its identity at the active pixels.
    Either a gather, the accumulating product and a copy back, or the native kernel
    adding each tile's product onto its rows; chosen by measurement per shape class.
    ``buffers``: a :class:`~mmdyn.ops.row_buffers.RowBuffers` for the PyTorch route's
    gathered rows. Returns ``dest``."""
    if dest.shape != source.shape or dest.dim() != 2 or dest.stride(1) != 1 \
            or source.stride(1) != 1:
        raise ValueError(f'scatter_gemm_acc: dest and source must be [P, N] tensors of one '
                         f'shape with contiguous rows, got {tuple(dest.shape)} and '
                         f'{tuple(source.shape)}')
    if rows.shape[0] != pixels.numel() or matrix.shape != (rows.shape[1], dest.shape[1]):
        raise ValueError(f'scatter_gemm_acc: {pixels.numel()} pixels, rows '
                         f'{tuple(rows.shape)}, matrix {tuple(matrix.shape)} and dest '
                         f'{tuple(dest.shape)} do not fit')
    rows = _follow(dest, rows.contiguous())
    matrix, bias = _follow(dest, matrix).contiguous(), _follow(dest, bias)
    impl = CHOOSER.choose('scatter_gemm_acc', _shape_class(rows, matrix), dest.device)
    return SCATTER_GEMM_ACC.candidates[impl](dest, source, pixels.reshape(-1).contiguous(),
                                             rows, matrix, bias, relu, buffers)


def dtype_name(tensor: Tensor) -> str:
    """``'float32'`` for a float32 tensor: the dtype part of a shape class."""
    return str(tensor.dtype).replace('torch.', '')


def _shape_class(rows: Tensor, matrix: Tensor) -> tuple:
    return (dtype_name(rows), row_class(rows.shape[0]),
            matrix.shape[0], matrix.shape[1])


def _follow(rows: Tensor, tensor):
    return tensor if tensor is None or tensor.dtype == rows.dtype else tensor.to(rows.dtype)


def gemm(rows: Tensor, matrix: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``bias + rows @ matrix`` -> ``[M, N]`` (``bias`` may be None; rows are made
    contiguous if they are not)."""
    rows = rows.contiguous()
    matrix, bias = _follow(rows, matrix), _follow(rows, bias)
    impl = CHOOSER.choose('gemm', _shape_class(rows, matrix), rows.device)
    return GEMM.candidates[impl](rows, matrix, bias)


def gemm_acc(out: Tensor, rows: Tensor, matrix: Tensor, bias: Optional[Tensor] = None,
             relu: bool = False) -> Tensor:
    """``out += bias + rows @ matrix`` in place (then ReLU if ``relu``: a residual sum
    and its activation in one call); ``out`` ``[M, N]`` contiguous; returns ``out``."""
    if not out.is_contiguous() or out.shape != (rows.shape[0], matrix.shape[1]):
        raise ValueError(f'gemm_acc: out must be a contiguous [{rows.shape[0]}, '
                         f'{matrix.shape[1]}] tensor, got {tuple(out.shape)}')
    rows = _follow(out, rows.contiguous())
    matrix, bias = _follow(out, matrix), _follow(out, bias)
    impl = CHOOSER.choose('gemm_acc', _shape_class(rows, matrix), out.device)
    return GEMM_ACC.candidates[impl](out, rows, matrix, bias, relu)


def gemm_into(out: Tensor, rows: Tensor, matrix: Tensor, bias: Optional[Tensor],
              relu: bool = False) -> Tensor:
    """``out[:] = bias + rows @ matrix`` (then ReLU if ``relu``); ``out`` ``[M, N]``
    must be contiguous (a row slice of a larger buffer is); returns ``out``."""
    if not out.is_contiguous() or out.shape != (rows.shape[0], matrix.shape[1]):
        raise ValueError(f'gemm_into: out must be a contiguous [{rows.shape[0]}, '
                         f'{matrix.shape[1]}] tensor, got {tuple(out.shape)}')
    rows = _follow(out, rows.contiguous())
    matrix, bias = _follow(out, matrix), _follow(out, bias)
    impl = CHOOSER.choose('gemm_into', _shape_class(rows, matrix), out.device)
    return GEMM_INTO.candidates[impl](out, rows, matrix, bias, relu)
