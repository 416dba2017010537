"""Per-sample FLOP records. FLOPs here are multiply-accumulates, the convention of
mmengine's/fvcore's counters (one fused multiply-add = one FLOP)."""
import functools
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .caching import build_outside_inference_mode


@dataclass(frozen=True)
class MaskTerms:
    """How a method names what its masks measure and select, for figures and tables:
    ``rate`` (e.g. LAS's activation rate, SAR's refine rate), ``selected`` and
    ``skipped`` (what a mask's on and off cells mean for that method)."""
    rate: str = 'activation rate'
    selected: str = 'computed'
    skipped: str = 'skipped'


@dataclass
class BlockRecord:
    """What one dynamic block did in the last forward (DESIGN contract 3).

    ``mask``: the hard (straight-through in training) patch mask ``[B, 1, rows, cols]``;
    ``activation_rate``: ``[B]`` fraction of output pixels computed;
    ``dense_flops``: the static block's FLOPs for one sample;
    ``executed_flops``: ``[B]`` FLOPs the sparse path executes for that mask, gate
    included (the model's FLOPs: losses and metrics read these); differentiable with
    respect to the mask in training;
    ``grid``: the :class:`~mmdyn.ops.PatchGrid` (output map size and patch size);
    ``ran_flops``: ``[B]`` FLOPs the operators really computed in this forward where
    that differs from ``executed_flops`` (a block above its crossover computes its
    residual on the dense route, machine-dependent); None: ``executed_flops`` ran.
    """
    name: str
    mask: Tensor
    activation_rate: Tensor
    dense_flops: float
    executed_flops: Tensor
    grid: object = None
    ran_flops: Optional[Tensor] = None

    @property
    def flops_that_ran(self) -> Tensor:
        """``[B]`` FLOPs the operators computed in this forward, dense routes included."""
        return self.executed_flops if self.ran_flops is None else self.ran_flops


def conv_macs(in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> int:
    """Multiply-accumulates of a conv for one output position."""
    return in_channels * out_channels * kernel_size * kernel_size // groups


def _clipped_lengths(count: int, step: int, offset: int, size: int, limit: int,
                     device=None) -> Tensor:
    starts = torch.arange(count, device=device) * step - offset
    stops = (starts + size).clamp(max=limit)
    return (stops - starts.clamp(min=0)).clamp(min=0).float()


def patch_extents(grid, device=None) -> Tensor:
    """``[rows, cols]`` pixel count of each patch that lies inside the map (read-only:
    cached per grid and device, every block's record reads it on every forward)."""
    return _patch_extents(grid, None if device is None else torch.device(device))


@functools.lru_cache(maxsize=256)
def _patch_extents(grid, device) -> Tensor:
    def build():  # a plain tensor (.caching): training forwards read it too
        rows = _clipped_lengths(grid.rows, grid.patch_h, 0, grid.patch_h, grid.height,
                                device)
        cols = _clipped_lengths(grid.cols, grid.patch_w, 0, grid.patch_w, grid.width,
                                device)
        return rows[:, None] * cols[None, :]
    return build_outside_inference_mode(build)


@dataclass
class ForwardRecord:
    """One backbone forward: the FLOPs that do not depend on any mask, per part
    (``{'stem': ..., 'layer1': ...}``), and every dynamic block's record."""
    static_flops: dict
    blocks: list

    @property
    def dense_flops(self) -> float:
        """Per-sample FLOPs with every mask full."""
        return sum(self.static_flops.values()) + sum(b.dense_flops for b in self.blocks)

    @property
    def executed_flops(self):
        """``[B]`` FLOPs executed for the masks of this forward."""
        return sum(self.static_flops.values()) + sum(b.executed_flops for b in self.blocks)

    @property
    def flops_that_ran(self):
        """``[B]`` FLOPs the operators computed in this forward: :attr:`executed_flops`
        with the dense routes taken counted whole (machine-dependent)."""
        return sum(self.static_flops.values()) + sum(b.flops_that_ran for b in self.blocks)
