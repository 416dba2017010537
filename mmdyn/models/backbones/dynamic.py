"""State and helpers shared by every spatially dynamic block.

A dynamic block owns: its patch granularity, an execution mode, a temperature, an
optional forced mask rate (benchmarks and tests), a cache of BatchNorm-folded
weights for the sparse path, and the :class:`~mmdyn.ops.BlockRecord` of its last
forward (DESIGN contract 3).
"""
import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from mmdyn.ops import BlockRecord, ForwardRecord, MaskTerms, PatchGrid, fold_conv_bn
from mmdyn.ops.caching import build_outside_inference_mode, version_counter
from .dense_fallback import measure_crossover, runs_densely, size_class

EXECUTION_MODES = ('auto', 'masked', 'sparse')


def check_execution_mode(mode: str) -> str:
    if mode not in EXECUTION_MODES:
        raise ValueError(f'execution_mode={mode!r} is not one of {EXECUTION_MODES}')
    return mode


def check_number(value, name: str, low: float = None, high: float = None,
                 low_inclusive: bool = True, integer: bool = False):
    """``value`` if it is a finite real number (an int when ``integer``) in the range;
    otherwise a ValueError naming ``name`` and the allowed values (strings, bools,
    NaN and infinities included)."""
    allowed = 'an int' if integer else 'a finite number'
    if low is not None or high is not None:
        left = '[' if low_inclusive else '('
        allowed += f' in {left}{"-inf" if low is None else low}, ' \
                   f'{"inf" if high is None else high}]'
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value) and (not integer or isinstance(value, numbers.Integral))
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(f'{name}={value!r}: must be {allowed}')
    return value


def check_granularity(value, where: str = 'granularity') -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{where}={value!r}: the spatial granularity must be a '
                         'positive int (patch size S in output pixels)')
    return value


def draw_forced_mask(batch: int, grid: PatchGrid, rate: float, seed: int,
                     device, groups: int = 1) -> Tensor:
    """A reproducible random ``[B, G, rows, cols]`` mask with exactly
    ``round(rate * rows * cols)`` active patches per sample and group (0 gives an
    empty mask, 1 a full one)."""
    cells = grid.rows * grid.cols
    active = int(round(rate * cells))
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch * groups, cells, generator=generator)
    mask = torch.zeros(batch * groups, cells)
    if active:
        mask.scatter_(1, scores.topk(active, dim=1).indices, 1.0)
    return mask.view(batch, groups, grid.rows, grid.cols).to(device)


def fold_sources(conv, bn):
    """The tensors a fold of ``conv`` + ``bn`` depends on: the conv's weight and bias,
    plus the BatchNorm's affine parameters and statistics while it is still there
    (after mmcv's ``fuse_conv_bn`` it is an ``nn.Identity`` and the conv holds it all)."""
    norm = check_foldable_norm(bn)
    tensors = (conv.weight, conv.bias)
    if norm is not None:
        tensors += (norm.weight, norm.bias, norm.running_mean, norm.running_var)
    return tuple(t for t in tensors if t is not None)


def check_foldable_norm(bn):
    """``bn`` if it is a BatchNorm, None if it was folded away (``nn.Identity``); any
    other norm layer cannot be folded into a conv."""
    if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        return bn
    if bn is None or isinstance(bn, torch.nn.Identity):
        return None
    raise ValueError(f'the sparse path folds BatchNorm into the convs; '
                     f'{type(bn).__name__} cannot be folded (use norm_cfg=dict(type="BN") '
                     'or "SyncBN")')


def tensor_state(tensor: Tensor) -> tuple:
    """What a cache built from ``tensor`` depends on: its identity, its in-place
    version counter (optimizer steps, load_state_dict, BatchNorm statistics updates and
    mmcv's fuse_conv_bn change it) and its storage, device and dtype (``model.to()``,
    ``.cuda()``, ``.half()`` in place keep a Parameter's identity and version but give
    it new data). An inference tensor (a weight derived in a forward under
    ``torch.inference_mode``) has no version counter and cannot be changed in place
    outside inference mode; its identity and storage stand for it."""
    return (id(tensor), version_counter(tensor), tensor.data_ptr(), tensor.device,
            tensor.dtype)


def cached_build(cache: dict, name: str, sources, build):
    """``build()``, recomputed only when one of the ``sources`` tensors changed
    (:func:`tensor_state`). Built outside inference mode
    (:mod:`mmdyn.ops.caching`)."""
    key = tuple(tensor_state(t) for t in sources if t is not None)
    entry = cache.get(name)
    if entry is None or entry[0] != key:
        entry = (key, build_outside_inference_mode(build))
        cache[name] = entry
    return entry[1]


def folded_cached(cache: dict, name: str, conv, bn):
    """BatchNorm-folded weights of ``conv`` + ``bn`` from ``cache`` (rebuilt when a
    source changes; ``bn`` may be an ``nn.Identity`` left by ``fuse_conv_bn``)."""
    norm = check_foldable_norm(bn)
    return cached_build(cache, name, fold_sources(conv, bn), lambda: fold_conv_bn(conv, norm))


def fold_cache_of(module) -> dict:
    """The fold cache kept on a plain module (a static ResNet block, a stem, ...), for
    parts of a dynamic backbone that are not dynamic blocks."""
    return module.__dict__.setdefault('_mmdyn_fold_cache', {})


class DynamicBlockMixin:
    """Mixed into a ResNet block class; call :meth:`init_dynamic` in ``__init__``."""

    def init_dynamic(self, granularity: int, name: str = ''):
        self.granularity = check_granularity(granularity)
        self.block_name = name
        self.execution_mode = 'auto'
        self.temperature = 1.0
        self.forced_rate = None
        self.forced_seed = 0
        self.record = None
        self.owns_input = False  # set by a backbone that never reuses block inputs
        # storage for the sparse path's large temporaries, shared by the backbone's
        # blocks (they run one after another); None: fresh memory
        self.row_buffers = None
        self._fold_cache = {}

    def may_overwrite(self, x: torch.Tensor, identity: torch.Tensor) -> bool:
        """Whether the shortcut ``identity`` may be updated in place: a fresh tensor
        (a projection's output), or the block input ``x`` itself when the owning
        backbone never reads it again and no autograd graph is recorded."""
        return identity is not x or (self.owns_input and not torch.is_grad_enabled())

    def new_parts(self) -> tuple:
        """What this block adds to the dense block it extends (gates, mask heads, kernel
        widths): trainable even inside a frozen stage."""
        return ()

    def use_sparse_path(self) -> bool:
        if self.execution_mode == 'sparse' and self.training:
            raise RuntimeError(
                f'{self.block_name}: execution_mode="sparse" is inference-only (it folds '
                'BatchNorm statistics); call model.eval() or use "auto"/"masked" to train')
        return self.execution_mode == 'sparse' or (self.execution_mode == 'auto'
                                                   and not self.training)

    def forced_mask(self, batch: int, grid: PatchGrid, like: torch.Tensor, groups: int = 1,
                    seed: Optional[int] = None):
        """The forced mask (None unless forced), on the device and in the dtype of
        ``like`` (the block input: bf16 weights and inputs stay bf16); ``seed`` defaults
        to the block's forced seed. Drawn once per setting and reused (read-only) by
        later forwards: a timed forward does not pay for the random draw."""
        if self.forced_rate is None:
            return None
        seed = self.forced_seed if seed is None else seed
        key = (batch, grid, groups, self.forced_rate, seed, like.device, like.dtype)
        cache = self.__dict__.setdefault('_forced_masks', {})
        if key not in cache:
            if len(cache) > 8:  # settings change rarely: keep only recent ones
                cache.clear()
            cache[key] = draw_forced_mask(batch, grid, self.forced_rate, seed, like.device,
                                          groups).to(like.dtype)
        return cache[key]

    def cached(self, name: str, sources, build):
        """``build()``, recomputed only when one of the ``sources`` tensors changed
        (see :func:`fold_cache_of`)."""
        return cached_build(self._fold_cache, name, sources, build)

    def folded(self, name: str, conv, bn):
        """BatchNorm-folded weights of ``conv`` + ``bn`` (cached). ``bn`` may already
        be folded away (an ``nn.Identity`` left by mmcv's ``fuse_conv_bn``)."""
        return folded_cached(self._fold_cache, name, conv, bn)

    def takes_dense_route(self, x, mask, grid: PatchGrid, run_sparse, run_dense,
                          groups: int = 1, shape: Optional[tuple] = None,
                          full_mask_dense: bool = False) -> bool:
        """Above its crossover rate (measured, or predicted from a latency profile) the
        block computes its residual densely and applies the mask: the same output,
        never slower than the dense block (:mod:`.dense_fallback`). The record still
        counts the FLOPs the mask selects (the model's, independent of the machine);
        ``ran_densely`` says which route ran. ``run_sparse(mask)`` / ``run_dense(mask)``
        run the two routes on this forward's tensors without changing them, for the
        measurement; ``groups``: masks per sample; ``shape``: see
        :func:`.dense_fallback.runs_densely`; ``full_mask_dense``: a full mask takes the
        dense route without a timing (see :func:`.dense_fallback.measure_crossover`)."""
        def measure():
            def at(rate):
                return draw_forced_mask(x.shape[0], grid, rate, 0, x.device,
                                        groups).to(x.dtype)
            # below rate 1 the dense route pays for applying the mask, which a full
            # mask skips: it is timed both ways
            half, ones = at(0.5), torch.ones_like(mask)
            return measure_crossover(lambda rate: run_sparse(at(rate)),
                                     lambda: run_dense(half), grid.rows * grid.cols,
                                     x.device, run_dense_full=lambda: run_dense(ones),
                                     full_mask_dense=full_mask_dense)
        self.ran_densely = runs_densely(float(mask.mean()), self.route_class(x.shape[0], grid),
                                        measure, x.device, shape)
        return self.ran_densely

    def route_class(self, batch: int, grid: PatchGrid) -> str:
        """Blocks of one class share a crossover: same convs (and groups), patch size,
        shortcut, batch and map size class."""
        convs = [getattr(self, f'conv{i}', None) for i in (1, 2, 3)]
        shapes = '-'.join(f'{c.in_channels}.{c.out_channels}.{c.stride[0]}.{c.dilation[0]}'
                          + (f'.g{c.groups}' if c.groups > 1 else '')
                          for c in convs if c is not None)
        patch = f'{grid.patch_h}' if grid.patch_h == grid.patch_w \
            else f'{grid.patch_h}x{grid.patch_w}'
        return (f'{type(self).__name__}:{shapes}-S{patch}'
                f'-ds{int(getattr(self, "downsample", None) is not None)}-b{batch}'
                f'-a{size_class(grid.height, grid.width)}')

    def store_record(self, grid: PatchGrid, mask: Tensor, computed_area: Tensor,
                     dense_flops: float, executed_flops: Tensor,
                     dense_route_flops: Optional[float] = None):
        """``dense_route_flops``: what the dense route computes per sample; it becomes
        the record's ``ran_flops`` when the last forward took that route."""
        ran = None
        if getattr(self, 'ran_densely', False):
            ran = torch.full_like(executed_flops, float(dense_route_flops),
                                  dtype=torch.float32)
        self.record = BlockRecord(
            name=self.block_name, mask=mask,
            activation_rate=computed_area / (grid.height * grid.width),
            dense_flops=float(dense_flops), executed_flops=executed_flops, grid=grid,
            ran_flops=ran)


@dataclass
class SparsitySummary:
    """Per-sample totals over the recorded forwards (several for sliding-window
    inference): backbone FLOPs dense and executed, activation rates per block."""
    dense_flops: float
    executed_flops: Tensor
    block_rates: Dict[str, Tensor]

    @property
    def activation_rate(self) -> Tensor:
        return torch.stack(list(self.block_rates.values())).mean(0)


class DynamicBackboneMixin:
    """Backbone-level controls (DESIGN contract 4) and records (contract 3)."""

    #: the method's words for its rate and masks (figure legends, axis labels)
    mask_terms = MaskTerms()

    def dynamic_blocks(self):
        return [m for m in self.modules() if isinstance(m, DynamicBlockMixin)]

    def set_execution_mode(self, mode: str):
        check_execution_mode(mode)
        for block in self.dynamic_blocks():
            block.execution_mode = mode

    def set_temperature(self, tau: float):
        check_number(tau, 'temperature', low=0, low_inclusive=False)
        for block in self.dynamic_blocks():
            block.temperature = float(tau)

    def set_forced_activation(self, rate: Optional[float], seed: int = 0):
        """Force random masks with exactly ``rate`` of the patches active in every
        block (benchmarks, tests); ``None`` gives control back to the maskers."""
        if rate is not None:
            check_number(rate, 'forced activation rate', 0.0, 1.0)
        for k, block in enumerate(self.dynamic_blocks()):
            block.forced_rate = rate
            block.forced_seed = seed * 100003 + k

    @property
    def records(self) -> ForwardRecord:
        """The record of the last forward."""
        if not getattr(self, '_forward_records', None):
            raise RuntimeError('no forward has been recorded yet')
        return self._forward_records[-1]

    def store_forward_record(self, record: ForwardRecord):
        if getattr(self, '_accumulating', False):
            self._forward_records.append(record)
        else:
            self._forward_records = [record]

    @contextmanager
    def accumulate_records(self):
        """Keep the records of every forward inside the block (sliding-window or
        multi-scale inference runs the backbone several times per image)."""
        self._forward_records, self._accumulating = [], True
        try:
            yield self
        finally:
            self._accumulating = False

    def sparsity_summary(self) -> SparsitySummary:
        forwards = getattr(self, '_forward_records', None)
        if not forwards:
            raise RuntimeError('no forward has been recorded yet')
        dense = sum(f.dense_flops for f in forwards)
        executed = sum(f.executed_flops for f in forwards)
        rates = {}
        for forward in forwards:
            for block in forward.blocks:
                rates.setdefault(block.name, []).append(block.activation_rate)
        return SparsitySummary(float(dense), executed,
                               {name: torch.stack(r).mean(0) for name, r in rates.items()})
