"""Adaptive max-pooling of a multi-resolution map held as rows (CAD for VGG-type
networks, Hesse et al., CVPR-W 2023, Eq. 2 with max pooling).

Step ``s`` merges the 2^s x 2^s blocks that the new level map puts at level ``s``: each
such block consists of four level-(s-1) cells, its value is their channel-wise maximum
(exactly a 2x2 max-pool of the coarser map). Every other cell keeps its row. Works on
the rows of :class:`~mmdyn.ops.multires.CellLayout` (``[n_cells, C]``), so the cost is
linear in the number of cells, not in the image area.
"""
from typing import Optional

import torch
from torch import Tensor

from .multires import CellLayout, new_rows
from .row_buffers import RowBuffers


def max_pool_rows(rows: Tensor, source: CellLayout, target: CellLayout, step: int,
                  buffers: Optional[RowBuffers] = None, out_name: Optional[str] = None
                  ) -> Tensor:
    """``target``'s rows from ``source``'s ``rows`` after adaptive max-pool step
    ``step`` (``target.levels`` = :func:`~mmdyn.ops.multires.step_levels` of
    ``source.levels``). Children of a merged block that lie outside the map are
    skipped (as a ceil-mode max-pool does). The output is :func:`new_rows`' (on
    ``buffers``' storage ``out_name`` when given, which must not hold ``rows``)."""
    positions = target.positions
    flat = target.flat_index(positions)
    out = new_rows(positions.shape[0], rows.shape[1], rows, buffers, out_name)
    torch.index_select(rows, 0, source.cover.index_select(0, flat), out=out)
    index = (target.levels.view(-1).index_select(0, flat) == step).nonzero()[:, 0]
    if index.numel() == 0:
        return out
    corner, corner_flat = positions.index_select(0, index), flat.index_select(0, index)
    _, height, width = target.shape
    half = 2 ** (step - 1)
    best = out.index_select(0, index)
    for dy, dx in ((0, half), (half, 0), (half, half)):
        inside = (corner[:, 1] + dy < height) & (corner[:, 2] + dx < width)
        child = torch.where(inside, corner_flat + (dy * width + dx), corner_flat)
        best = torch.maximum(best, rows.index_select(0, source.cover.index_select(0, child)))
    out.index_copy_(0, index, best)
    return out
