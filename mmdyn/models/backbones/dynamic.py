"""State and helpers shared by every spatially dynamic block.

A dynamic block owns: its patch granularity, an execution mode, a temperature, an
optional forced mask rate (benchmarks and tests), a cache of BatchNorm-folded
weights for the sparse path, and the :class:`~mmdyn.ops.BlockRecord` of its last
forward (DESIGN contract 3).
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from mmdyn.ops import BlockRecord, ForwardRecord, PatchGrid, fold_conv_bn

EXECUTION_MODES = ('auto', 'masked', 'sparse')


def check_execution_mode(mode: str) -> str:
    if mode not in EXECUTION_MODES:
        raise ValueError(f'execution_mode={mode!r} is not one of {EXECUTION_MODES}')
    return mode


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
        self._fold_cache = {}

    def use_sparse_path(self) -> bool:
        if self.execution_mode == 'sparse' and self.training:
            raise RuntimeError(
                f'{self.block_name}: execution_mode="sparse" is inference-only (it folds '
                'BatchNorm statistics); call model.eval() or use "auto"/"masked" to train')
        return self.execution_mode == 'sparse' or (self.execution_mode == 'auto'
                                                   and not self.training)

    def forced_mask(self, batch: int, grid: PatchGrid, device, groups: int = 1):
        if self.forced_rate is None:
            return None
        return draw_forced_mask(batch, grid, self.forced_rate, self.forced_seed, device,
                                groups)

    def cached(self, name: str, sources, build):
        """``build()``, recomputed only when one of the ``sources`` tensors changed
        (tracked through their in-place version counters: optimizer steps,
        load_state_dict and BatchNorm statistics updates all bump them)."""
        key = tuple((id(t), t._version) for t in sources if t is not None)
        cached = self._fold_cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, build())
            self._fold_cache[name] = cached
        return cached[1]

    def folded(self, name: str, conv, bn):
        """BatchNorm-folded weights of ``conv`` + ``bn`` (cached). ``bn`` may already
        be folded away (an ``nn.Identity`` left by mmcv's ``fuse_conv_bn``)."""
        if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            return self.cached(name, (conv.weight, conv.bias), lambda: fold_conv_bn(conv, None))
        return self.cached(name, (conv.weight, conv.bias, bn.weight, bn.bias,
                                  bn.running_mean, bn.running_var),
                           lambda: fold_conv_bn(conv, bn))

    def store_record(self, grid: PatchGrid, mask: Tensor, computed_area: Tensor,
                     dense_flops: float, executed_flops: Tensor):
        self.record = BlockRecord(
            name=self.block_name, mask=mask,
            activation_rate=computed_area / (grid.height * grid.width),
            dense_flops=float(dense_flops), executed_flops=executed_flops, grid=grid)


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

    def dynamic_blocks(self):
        return [m for m in self.modules() if isinstance(m, DynamicBlockMixin)]

    def set_execution_mode(self, mode: str):
        check_execution_mode(mode)
        for block in self.dynamic_blocks():
            block.execution_mode = mode

    def set_temperature(self, tau: float):
        if not tau > 0:
            raise ValueError(f'temperature must be > 0, got {tau}')
        for block in self.dynamic_blocks():
            block.temperature = float(tau)

    def set_forced_activation(self, rate: Optional[float], seed: int = 0):
        """Force random masks with exactly ``rate`` of the patches active in every
        block (benchmarks, tests); ``None`` gives control back to the maskers."""
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError(f'forced activation rate must be in [0, 1], got {rate}')
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
