"""Multi-resolution feature maps for content-adaptive downsampling.

Hesse et al., "Content-Adaptive Downsampling in Convolutional Neural Networks",
CVPR-W 2023. A map lives on its *fine* grid (H x W). A level map ``levels``
([B, H, W], int) says at which resolution each pixel's region is held: level l is one
cell of 2^l x 2^l fine pixels, aligned to multiples of 2^l. A cell's value lives at its
top-left pixel, the *active* cell; the other pixels of the cell are inactive and read
the active cell's value.

Adaptive downsampling (Eq. 2), step s: a mask on the 2^s x 2^s block grid says which
blocks are downsampled; only blocks whose pixels are all still at level s-1 (the
lowest resolution so far) can be, so successive steps give a quadtree.

Convolutions on such a map (the modified submanifold convolution of Sec. 3) keep the
fine grid's dilation: a 3x3 tap of the output cell at p reads the fine pixel
p + d * (k - 1), which belongs to some cell, whose active value it takes. Run with the
dilations of the dilated (output stride 8) network, a cell of level l sees exactly what
the strided network sees at that position (Guarantee 1: receptive fields unchanged);
with every block downsampled the result is the strided network's output, with none the
dilated network's (Guarantee 2).

Everything is computed on *rows*: the active cells of a map, channels-last,
``[n_cells, C]``. A 1x1 conv is one matrix product, a 3x3 conv one row gather of its 9
taps (a zero row for taps outside the image) and one matrix product, so the work scales
with the number of active cells.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .gemm import gemm_into
from .row_buffers import RowBuffers

DOWNSAMPLE_MODES = ('strided', 'max', 'avg')


def check_keep_mask(mask: Tensor, shape, name: str = 'mask') -> Tensor:
    """A keep mask ``[B, rows, cols]`` (True / 1 = keep full resolution) of the
    expected ``shape``, as bool; anything else is a clear error."""
    if not isinstance(mask, Tensor):
        raise TypeError(f'{name} must be a tensor, got {type(mask).__name__}')
    if mask.dtype not in (torch.bool, torch.uint8, torch.float32, torch.float64,
                          torch.float16, torch.int64, torch.int32):
        raise TypeError(f'{name} must be bool, integer or float, got {mask.dtype}')
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f'{name} must have shape {tuple(shape)} ([B, rows, cols] on the '
                         f'downsampling grid), got {tuple(mask.shape)}')
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f'{name} must hold only 0 and 1')
        mask = mask > 0.5
    return mask


def block_grid(height: int, width: int, step: int):
    """Rows and columns of the 2^step block grid over a fine map."""
    size = 2 ** step
    return -(-height // size), -(-width // size)


def _expand(blocks: Tensor, size: int, height: int, width: int) -> Tensor:
    return blocks.repeat_interleave(size, 1).repeat_interleave(size, 2)[:, :height, :width]


def step_levels(levels: Tensor, keep: Tensor, step: int) -> Tensor:
    """Adaptive downsampling step ``step`` (Eq. 2): the blocks of 2^step x 2^step fine
    pixels that ``keep`` leaves off and that are entirely at level ``step - 1`` go to
    level ``step``. ``keep``: bool ``[B, rows, cols]`` on the block grid."""
    batch, height, width = levels.shape
    size = 2 ** step
    keep = check_keep_mask(keep, (batch, *block_grid(height, width, step)), 'keep mask')
    # A block is eligible when all its pixels are still at the lowest level so far;
    # padding beyond the map counts as eligible.
    below = (levels != step - 1).float().unsqueeze(1)
    blocked = F.max_pool2d(below, size, size, ceil_mode=True)[:, 0] > 0
    down = ~keep & ~blocked
    return torch.where(_expand(down, size, height, width), torch.full_like(levels, step),
                       levels)


def _low_bits(levels: Tensor) -> Tensor:
    """``2^level - 1`` per pixel (a table lookup: int64 shifts and powers are slow)."""
    table = (1 << torch.arange(63, device=levels.device)) - 1
    return table.index_select(0, levels.reshape(-1)).view(levels.shape)


@dataclass
class CellLayout:
    """The active cells of a level map: ``positions`` ``[n, 3]`` (batch, y, x), sorted,
    and ``cover`` ``[B * H * W]``: the row of the cell each fine pixel belongs to."""
    levels: Tensor
    positions: Tensor
    cover: Tensor

    @classmethod
    def from_levels(cls, levels: Tensor) -> 'CellLayout':
        batch, height, width = levels.shape
        device = levels.device
        # A cell of level l is 2^l pixels, aligned: a pixel's offset in its cell is its
        # coordinate's low l bits. Few full-map passes: each costs a parallel region.
        low = _low_bits(levels)
        dy = torch.arange(height, device=device).view(1, height, 1) & low
        dx = torch.arange(width, device=device).view(1, 1, width) & low
        active = (dy | dx) == 0
        positions = torch.nonzero(active)
        row_of = active.view(-1).cumsum(0) - 1  # the row of each active pixel
        top_left = torch.arange(batch * height * width, device=device).view_as(levels) \
            - dy * width - dx
        return cls(levels, positions, row_of.index_select(0, top_left.view(-1)))

    @classmethod
    def full(cls, batch: int, height: int, width: int, device=None) -> 'CellLayout':
        return cls.from_levels(torch.zeros(batch, height, width, dtype=torch.long,
                                           device=device))

    @property
    def shape(self):
        return tuple(self.levels.shape)

    @property
    def num_cells(self) -> int:
        return self.positions.shape[0]

    def cells_per_sample(self) -> Tensor:
        return torch.bincount(self.positions[:, 0], minlength=self.shape[0])

    def flat_index(self, positions: Tensor) -> Tensor:
        """Index of each fine position ``[n, 3]`` in the flattened ``[B, H, W]`` grid."""
        _, height, width = self.shape
        return (positions[:, 0] * height + positions[:, 1]) * width + positions[:, 2]

    def rows_at(self, positions: Tensor) -> Tensor:
        """The row covering each fine position ``[n, 3]``."""
        return self.cover.index_select(0, self.flat_index(positions))

    def tap_rows(self, positions: Tensor, dilation: int) -> Tensor:
        """``[n, 9]`` rows read by a 3x3 conv (``dilation`` on the fine grid) at each
        output ``positions``; taps outside the map point at row ``num_cells`` (zero).
        Read from the cover map padded by ``dilation`` with that row: nine fixed
        offsets from each output's flat index."""
        _, height, width = self.shape
        d = dilation
        padded = F.pad(self.cover.view(-1, height, width), (d, d, d, d), value=self.num_cells)
        padded_width = width + 2 * d
        centre = ((positions[:, 0] * (height + 2 * d) + positions[:, 1] + d) * padded_width
                  + positions[:, 2] + d)
        steps = torch.arange(-1, 2, device=positions.device) * d
        offsets = (steps.view(3, 1) * padded_width + steps.view(1, 3)).view(1, 9)
        return padded.view(-1).index_select(0, (centre.view(-1, 1) + offsets).view(-1)) \
            .view(-1, 9)


def dense_to_rows(x: Tensor, layout: CellLayout) -> Tensor:
    """``[n_cells, C]`` values of the active cells of a dense ``[B, C, H, W]`` map."""
    rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    _, height, width = layout.shape
    p = layout.positions
    return rows.index_select(0, (p[:, 0] * height + p[:, 1]) * width + p[:, 2])


def rows_to_dense(rows: Tensor, layout: CellLayout) -> Tensor:
    """The dense ``[B, C, H, W]`` map (channels-last memory) in which every pixel holds
    its cell's value (nearest broadcast of the coarse cells)."""
    batch, height, width = layout.shape
    dense = F.embedding(layout.cover, rows)
    return dense.view(batch, height, width, -1).permute(0, 3, 1, 2)


def fill_cells(x: Tensor, layout: CellLayout) -> Tensor:
    """Dense reference of the multi-resolution map: every pixel takes the value of its
    cell's active (top-left) pixel."""
    return rows_to_dense(dense_to_rows(x, layout), layout)


def new_rows(n: int, channels: int, like: Tensor, buffers: Optional[RowBuffers] = None,
             name: Optional[str] = None) -> Tensor:
    """``[n, channels]`` uninitialised rows (``like``'s dtype and device) stored with one
    more, zero, row after them: :func:`conv3x3_rows` reads taps outside the map from
    that row without copying the map. On ``buffers``' storage ``name`` when both are
    given, fresh memory otherwise."""
    if buffers is None or name is None:
        buffer = like.new_empty(n + 1, channels)
    else:
        buffer = buffers.take(name, (n + 1, channels), like)
    buffer[n].zero_()
    return buffer[:n]


def zero_padded(rows: Tensor) -> Tensor:
    """``[n + 1, C]``: ``rows`` followed by a zero row (the row every tap outside the map
    reads). A view when ``rows`` come from :func:`new_rows` and the row after them is
    still zero, a copy otherwise."""
    n, channels = rows.shape
    fits = (rows.is_contiguous() and rows.storage_offset() == 0 and channels > 0
            and rows.untyped_storage().nbytes() >= (n + 1) * channels * rows.element_size())
    if fits:
        padded = rows.as_strided((n + 1, channels), (channels, 1))
        if not bool(padded[n].any()):
            return padded
    return torch.cat([rows, rows.new_zeros(1, channels)])


def conv3x3_rows(rows: Tensor, taps: Tensor, matrix: Tensor, bias: Tensor,
                 chunk_rows: int = 16384, relu: bool = False,
                 buffers: Optional[RowBuffers] = None, out_name: Optional[str] = None
                 ) -> Tensor:
    """A 3x3 conv on cells: gather the 9 taps of every output cell (``taps`` from
    :meth:`CellLayout.tap_rows`) and multiply by the ``[9 * C_in, C_out]`` matrix
    (kernel-row, kernel-col, channel order, as :class:`FoldedConv.matrix`), with the
    measured GEMM kernel (:func:`~mmdyn.ops.gemm.gemm_into`), then ReLU if ``relu``.
    ``chunk_rows`` output cells per gather-and-multiply bound the gathered buffer, which
    all chunks reuse; each chunk's product is written straight into its slice of the
    output. The output comes from :func:`new_rows`, so the next conv gathers from it
    without a copy. With ``buffers`` the gather buffer, and the output when
    ``out_name`` is given (it must differ from the storage ``rows`` live on), are
    taken from that :class:`RowBuffers`."""
    padded = zero_padded(rows)
    n = taps.shape[0]
    out = new_rows(n, matrix.shape[1], rows, buffers, out_name)
    chunk_rows = max(1, min(chunk_rows, n))
    shape = (chunk_rows * taps.shape[1], rows.shape[1])
    buffer = rows.new_empty(shape) if buffers is None else buffers.take('gather', shape, rows)
    for start in range(0, n, chunk_rows):
        chunk = taps[start:start + chunk_rows]
        gathered = buffer[:chunk.numel()]
        torch.index_select(padded, 0, chunk.reshape(-1), out=gathered)
        gemm_into(out[start:start + chunk.shape[0]], gathered.view(chunk.shape[0], -1),
                  matrix, bias, relu)
    return out


def adaptive_downsample(x: Tensor, levels: Tensor, keep: Tensor, step: int,
                        mode: str = 'strided'):
    """Eq. 2 on a dense map: blocks of 2^step pixels that ``keep`` leaves off (and that
    are still at the lowest level) become one cell. Returns the dense map in which
    every pixel holds its cell's value, and the new level map.

    ``mode``: ``'strided'`` (the cell takes its top-left value, as a strided conv
    samples), ``'max'`` or ``'avg'`` (pooling over the block)."""
    if mode not in DOWNSAMPLE_MODES:
        raise ValueError(f'mode={mode!r} is not one of {DOWNSAMPLE_MODES}')
    new_levels = step_levels(levels, keep, step)
    if mode == 'strided':
        return fill_cells(x, CellLayout.from_levels(new_levels)), new_levels
    size = 2 ** step
    height, width = x.shape[2:]
    if mode == 'max':
        pooled = F.max_pool2d(x, size, size, ceil_mode=True)
    else:
        pooled = F.avg_pool2d(x, size, size, ceil_mode=True, count_include_pad=False)
    pooled = pooled.repeat_interleave(size, 2).repeat_interleave(size, 3)[:, :, :height, :width]
    return torch.where((new_levels == step).unsqueeze(1), pooled, x), new_levels
