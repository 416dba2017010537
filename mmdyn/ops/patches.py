"""Patch-grid utilities: mask -> indices, gather with halo, scatter-add (any H, W).

An output map of size H x W is covered by a grid of ``rows x cols`` patches of
``S x S`` pixels, ``rows = ceil(H / S)``; border patches hang over the map and are
computed on a zero-padded canvas, then cropped. A patch (i, j) of the output needs,
from a map ``k`` convolutions earlier, the *window* that starts at
``i * step - offset`` and is ``size`` pixels long (``step = S * stride``,
``offset``/``size`` grow by each conv's padding and dilated kernel).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PatchGrid:
    """The S x S patch grid over an ``height x width`` output map."""
    height: int
    width: int
    patch: int

    def __post_init__(self):
        if not (isinstance(self.patch, int) and self.patch > 0):
            raise ValueError(f'patch size must be a positive int, got {self.patch!r}')

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.patch)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.patch)

    @property
    def shape(self):
        return self.rows, self.cols


@dataclass(frozen=True)
class Window:
    """Where the input of patch (i, j) lives on an earlier map: start = i*step - offset."""
    step: int
    size: int
    offset: int


def active_patches(mask: Tensor) -> Tensor:
    """Indices ``[N, 3]`` (batch, row, col) of the patches where ``mask`` is on.

    ``mask`` is ``[B, 1, rows, cols]`` (or ``[B, rows, cols]``) with values in {0, 1}.
    """
    if mask.dim() == 4:
        mask = mask.squeeze(1)
    if mask.dim() != 3:
        raise ValueError(f'mask must be [B, 1, rows, cols], got shape {tuple(mask.shape)}')
    return torch.nonzero(mask.detach() > 0.5)


def gather_windows(x: Tensor, index: Tensor, grid: PatchGrid, window: Window) -> Tensor:
    """Stack the windows of ``x`` that feed the active patches: ``[N, C, size, size]``.

    Pixels outside ``x`` read as zero, which is exactly the zero padding a dense conv
    would apply, so a VALID conv on the stack equals the dense conv on those patches.
    """
    height = (grid.rows - 1) * window.step + window.size
    width = (grid.cols - 1) * window.step + window.size
    pad_bottom = height - window.offset - x.shape[2]
    pad_right = width - window.offset - x.shape[3]
    padded = F.pad(x, (window.offset, max(pad_right, 0), window.offset, max(pad_bottom, 0)))
    padded = padded[:, :, :height, :width]
    tiles = padded.unfold(2, window.size, window.step).unfold(3, window.size, window.step)
    batch, row, col = index.unbind(1)
    return tiles[batch, :, row, col]


def window_validity(index: Tensor, grid: PatchGrid, window: Window, height: int,
                    width: int) -> Tensor:
    """``[N, 1, size, size]`` float mask, 1 where a window pixel lies inside an
    ``height x width`` map. Intermediate maps of a sparse block multiply by it so that
    the next VALID conv sees zero padding, as the dense network does."""
    span = torch.arange(window.size, device=index.device)
    rows = index[:, 1:2] * window.step - window.offset + span
    cols = index[:, 2:3] * window.step - window.offset + span
    inside_rows = (rows >= 0) & (rows < height)
    inside_cols = (cols >= 0) & (cols < width)
    return (inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1)


def scatter_add_patches(base: Tensor, patches: Tensor, index: Tensor,
                        grid: PatchGrid) -> Tensor:
    """Return ``base`` with ``patches`` ``[N, C, S, S]`` added at their grid places.

    ``base`` is ``[B, C, height, width]``; the result is a new tensor of the same
    shape (``base`` is not modified). Border patches are cropped to the map.
    """
    batch_size, channels = base.shape[:2]
    size = grid.patch
    canvas_h, canvas_w = grid.rows * size, grid.cols * size
    if (canvas_h, canvas_w) == tuple(base.shape[2:]):
        canvas = base.clone(memory_format=torch.contiguous_format)
    else:
        canvas = base.new_zeros(batch_size, channels, canvas_h, canvas_w)
        canvas[:, :, :grid.height, :grid.width] = base
    if index.numel():
        tiles = canvas.view(batch_size, channels, grid.rows, size, grid.cols, size)
        tiles = tiles.permute(0, 2, 4, 1, 3, 5)
        batch, row, col = index.unbind(1)
        tiles.index_put_((batch, row, col), patches.to(canvas.dtype), accumulate=True)
    if (canvas_h, canvas_w) == tuple(base.shape[2:]):
        return canvas
    return canvas[:, :, :grid.height, :grid.width]


def upsample_patch_mask(mask: Tensor, grid: PatchGrid) -> Tensor:
    """Nearest upsampling of a ``[B, 1, rows, cols]`` patch mask to the map size."""
    size = grid.patch
    full = mask.repeat_interleave(size, dim=2).repeat_interleave(size, dim=3)
    return full[:, :, :grid.height, :grid.width]
