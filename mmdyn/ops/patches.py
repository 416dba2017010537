"""Patch-grid utilities: mask -> indices, gather with halo, scatter-add (any H, W).

An output map of size H x W is covered by a grid of ``rows x cols`` patches of
``S_h x S_w`` pixels (square, ``S x S``, unless a pair is given),
``rows = ceil(H / S_h)``; border patches hang over the map: the sparse executors
compute them cropped to the map (:func:`border_groups`, :func:`cropped_window`). A
patch (i, j) of the output needs, from a map ``k``
convolutions earlier, the *window* that starts at ``i * step - offset`` and is ``size``
pixels long (``step = S * stride``, ``offset``/``size`` grow by each conv's padding
and dilated kernel); each of the three is an int or a (vertical, horizontal) pair.

The sparse path works on channels-last maps: a map is then a ``[B * H * W, C]`` matrix
of pixel rows, windows are one row gather and results one row copy.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .native import native_kernels
from .row_buffers import RowBuffers, add_at_rows, buffer_slot, gather_rows


IntOrPair = Union[int, Tuple[int, int]]


def pair(value: IntOrPair) -> Tuple[int, int]:
    """``S`` -> ``(S, S)``; a pair is returned as a tuple."""
    return (value, value) if isinstance(value, int) else tuple(value)


@dataclass(frozen=True)
class PatchGrid:
    """The patch grid over an ``height x width`` output map; ``patch`` is ``S`` (square
    patches) or ``(S_h, S_w)``."""
    height: int
    width: int
    patch: IntOrPair

    def __post_init__(self):
        sizes = pair(self.patch) if isinstance(self.patch, (int, tuple, list)) else ()
        if len(sizes) != 2 or not all(isinstance(v, int) and v > 0 for v in sizes):
            raise ValueError(f'patch size must be a positive int or a pair of them, '
                             f'got {self.patch!r}')

    @property
    def patch_h(self) -> int:
        return pair(self.patch)[0]

    @property
    def patch_w(self) -> int:
        return pair(self.patch)[1]

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.patch_h)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.patch_w)

    @property
    def shape(self):
        return self.rows, self.cols


@dataclass(frozen=True)
class Window:
    """Where the input of patch (i, j) lives on an earlier map: start = i*step - offset
    (each field an int or a (vertical, horizontal) pair)."""
    step: IntOrPair
    size: IntOrPair
    offset: IntOrPair


def active_patches(mask: Tensor) -> Tensor:
    """Indices ``[N, 3]`` (batch, row, col) of the patches where ``mask`` is on.

    ``mask`` is ``[B, 1, rows, cols]`` (or ``[B, rows, cols]``) with values in {0, 1}.
    """
    if mask.dim() == 4:
        mask = mask.squeeze(1)
    if mask.dim() != 3:
        raise ValueError(f'mask must be [B, 1, rows, cols], got shape {tuple(mask.shape)}')
    return torch.nonzero(mask.detach() > 0.5)


def pixel_rows(x: Tensor) -> Tensor:
    """``[B * H * W, C]`` row view of a channels-last map (a copy for other layouts)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _window_taps(index: Tensor, window: Window, height: int, width: int):
    """Row ids of every window pixel on a ``height x width`` map, and the positions of
    the pixels that fall outside it (they must read as zero)."""
    (step_h, step_w), (size_h, size_w) = pair(window.step), pair(window.size)
    offset_h, offset_w = pair(window.offset)
    rows = index[:, 1:2] * step_h - offset_h + torch.arange(size_h, device=index.device)
    cols = index[:, 2:3] * step_w - offset_w + torch.arange(size_w, device=index.device)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & \
        ((cols >= 0) & (cols < width))[:, None, :]
    taps = (index[:, 0, None, None] * height + rows.clamp(0, height - 1)[:, :, None]) * width \
        + cols.clamp(0, width - 1)[:, None, :]
    outside = torch.nonzero(~inside.view(-1)).view(-1)
    return taps.view(-1), outside


def gather_windows(x: Tensor, index: Tensor, window: Window,
                   buffers: Optional[RowBuffers] = None, relu: bool = False,
                   out: Optional[Tensor] = None) -> Tensor:
    """Stack the windows of ``x`` that feed the active patches: ``[N, C, size_h,
    size_w]`` (channels-last memory), ReLU'd if ``relu``.

    Pixels outside ``x`` read as zero, which is exactly the zero padding a dense conv
    would apply, so a VALID conv on the stack equals the dense conv on those patches.
    One row gather on the channels-last view: no padded copy of ``x`` is made; into the
    slot ``'windows'`` of ``buffers`` when given (see :func:`.row_buffers.gather_rows`).
    float32 CPU maps of a channels-last layout take the native kernel where it is built
    (one pass: row ids, zero padding and ReLU computed as the rows are copied); other
    maps, and maps whose gradient is recorded, the PyTorch route. ``out``: contiguous
    ``[N * size_h * size_w, C]`` rows to write the windows into (no gradient recorded).
    """
    size_h, size_w = pair(window.size)
    shape = (index.shape[0] * size_h * size_w, x.shape[1])
    kernels = native_kernels() if x.device.type == 'cpu' and x.dtype == torch.float32 \
        and x.is_contiguous(memory_format=torch.channels_last) \
        and not (torch.is_grad_enabled() and x.requires_grad) else None
    if out is not None and (tuple(out.shape) != shape or not out.is_contiguous()):
        raise ValueError(f'gather_windows: out must be contiguous {shape} rows, got '
                         f'{tuple(out.shape)}')
    if kernels is not None:
        windows = out if out is not None else buffer_slot(buffers, 'windows', shape, x)
        if windows is None:
            windows = x.new_empty(shape)
        (step_h, step_w), (offset_h, offset_w) = pair(window.step), pair(window.offset)
        kernels.gather_windows(pixel_rows(x), index.long().contiguous(), windows, x.shape[2],
                               x.shape[3], step_h, step_w, size_h, size_w, offset_h,
                               offset_w, relu)
    else:
        taps, outside = _window_taps(index, window, x.shape[2], x.shape[3])
        if out is None:
            windows = gather_rows(pixel_rows(x), taps, buffers, 'windows')
        else:
            windows = torch.index_select(pixel_rows(x), 0, taps, out=out)
        if outside.numel():
            windows.index_fill_(0, outside, 0.0)
        if relu:
            windows = windows.relu_()
    return windows.view(index.shape[0], size_h, size_w, x.shape[1]).permute(0, 3, 1, 2)


def border_groups(index: Tensor, grid: PatchGrid) -> List[Tuple[Tensor, Tuple[int, int]]]:
    """The active patches ``index`` grouped by the part of them that lies inside the map:
    ``[(index of the group, (rows, cols) inside the map)]``, non-empty groups only. Where
    ``S`` does not divide the map, the last patch row and column hang over it (a 50-row
    map in 7-row patches keeps one row of the last patch row): computed cropped, they
    cost what the model's FLOPs count. One group (all patches, full size) otherwise."""
    last_h = grid.height - (grid.rows - 1) * grid.patch_h
    last_w = grid.width - (grid.cols - 1) * grid.patch_w
    if last_h == grid.patch_h and last_w == grid.patch_w:
        return [(index, (grid.patch_h, grid.patch_w))]
    on_last_row = index[:, 1] == grid.rows - 1 if last_h < grid.patch_h else None
    on_last_col = index[:, 2] == grid.cols - 1 if last_w < grid.patch_w else None
    groups = []
    for last_row in ((False, True) if on_last_row is not None else (False, )):
        for last_col in ((False, True) if on_last_col is not None else (False, )):
            chosen = torch.ones_like(index[:, 0], dtype=torch.bool)
            if on_last_row is not None:
                chosen &= on_last_row if last_row else ~on_last_row
            if on_last_col is not None:
                chosen &= on_last_col if last_col else ~on_last_col
            members = torch.nonzero(chosen).view(-1)
            if members.numel():
                groups.append((index.index_select(0, members),
                               (last_h if last_row else grid.patch_h,
                                last_w if last_col else grid.patch_w)))
    return groups


def cropped_window(window: Window, grid: PatchGrid, extent: Tuple[int, int]) -> Window:
    """The window that feeds patches of ``extent`` (rows, cols) inside the map: shorter
    than ``window`` by the conv's stride (``step / S``) for every patch row or column
    cut off."""
    (step_h, step_w), (size_h, size_w) = pair(window.step), pair(window.size)
    cut_h, cut_w = grid.patch_h - extent[0], grid.patch_w - extent[1]
    if cut_h == cut_w == 0:
        return window
    return Window(window.step, (size_h - cut_h * (step_h // grid.patch_h),
                                size_w - cut_w * (step_w // grid.patch_w)), window.offset)


def border_pixels(groups, grid: PatchGrid) -> Tensor:
    """Row ids (on the output map) of the pixels of :func:`border_groups`' groups, group
    after group: the row order of :func:`grouped_rows`."""
    pixels = [patch_pixels(group, grid, extent)[0] for group, extent in groups]
    return pixels[0] if len(pixels) == 1 else torch.cat(pixels)


def grouped_rows(groups, grid: PatchGrid, window: Window, patches_for,
                 pixels: Optional[Tensor] = None) -> Tensor:
    """``[n, C]``: the pixel rows of ``patches_for(group, window)`` (channels-last
    ``[N, C, rows, cols]`` patches from ``window`` cropped to the group's extent) for
    each of :func:`border_groups`' groups, group after group. A ``patches_for`` that
    has a ``rows_of_groups(groups, grid, window, pixels)`` method computes them that
    way (:class:`~mmdyn.ops.window_conv.WindowConv`: the groups in one product, or
    straight from the map, where that is faster); ``pixels``: the groups' ids on the
    output map (:func:`border_pixels`) when the caller has them."""
    rows_of_groups = getattr(patches_for, 'rows_of_groups', None)
    if rows_of_groups is not None:
        return rows_of_groups(groups, grid, window, pixels)
    return rows_group_by_group(groups, grid, window, patches_for)


def rows_group_by_group(groups, grid: PatchGrid, window: Window, patches_for) -> Tensor:
    """:func:`grouped_rows` computed by ``patches_for`` on each group's windows."""
    rows = [pixel_rows(patches_for(group, cropped_window(window, grid, extent)))
            for group, extent in groups]
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def patch_pixels(index: Tensor, grid: PatchGrid, extent: Optional[Tuple[int, int]] = None):
    """Row ids (on the output map) of the pixels of every active patch that lie inside
    the map, and which rows of the ``[N * S_h * S_w]`` patch stack they are (None: all).
    ``extent``: the patches are ``(rows, cols)`` crops that lie inside the map (a group
    of :func:`border_groups`); all their pixels count."""
    height, width = extent or (grid.patch_h, grid.patch_w)
    rows = index[:, 1:2] * grid.patch_h + torch.arange(height, device=index.device)
    cols = index[:, 2:3] * grid.patch_w + torch.arange(width, device=index.device)
    pixels = (index[:, 0, None, None] * grid.height + rows[:, :, None]) * grid.width \
        + cols[:, None, :]
    if extent is not None or (grid.height % grid.patch_h == 0
                              and grid.width % grid.patch_w == 0):
        return pixels.view(-1), None
    inside = ((rows < grid.height)[:, :, None] & (cols < grid.width)[:, None, :]).view(-1)
    keep = torch.nonzero(inside).view(-1)
    return pixels.view(-1).index_select(0, keep), keep


def scatter_add_patches(base: Tensor, patches: Tensor, index: Tensor, grid: PatchGrid,
                        relu: bool = False, inplace: bool = False,
                        pointwise=None, buffers: Optional[RowBuffers] = None,
                        base_nonnegative: bool = False,
                        extent: Optional[Tuple[int, int]] = None) -> Tensor:
    """``base + scatter(f(patches))``, optionally followed by ReLU over the whole map.

    ``base`` is ``[B, C, height, width]`` and ``patches`` ``[N, C', S_h, S_w]``; border
    patches are cropped to the map (``extent``: ``patches`` are ``[N, C', rows, cols]``
    crops inside the map, see :func:`patch_pixels`). The rest as
    :func:`scatter_add_rows`.
    """
    pixels, keep = patch_pixels(index, grid, extent)
    values = pixel_rows(patches)
    if keep is not None:
        values = values.index_select(0, keep)
    return scatter_add_rows(base, values, pixels, relu, inplace, pointwise, buffers,
                            base_nonnegative)


def scatter_add_rows(base: Tensor, values: Tensor, pixels: Tensor, relu: bool = False,
                     inplace: bool = False, pointwise=None,
                     buffers: Optional[RowBuffers] = None,
                     base_nonnegative: bool = False) -> Tensor:
    """``base + scatter(f(values))`` at the pixel rows ``pixels`` (distinct), optionally
    followed by ReLU over the whole map. ``pointwise`` (a 1x1 :class:`FoldedConv`, or
    None for the identity) is applied to the ``[N, C']`` rows ``values`` inside the
    scatter: its product is added straight onto the base rows
    (:func:`~mmdyn.ops.gemm.scatter_gemm_acc`, no intermediate map). The result is
    channels-last; ``base`` is left untouched unless ``inplace`` (then it must already
    be channels-last). Base rows gathered into a buffer go to the slot ``'scatter'`` of
    ``buffers`` when given. ``base_nonnegative``: ``base`` is a
    ReLU output, so the ReLU leaves it unchanged outside the patches (no pass over the
    map).
    """
    if not base.is_contiguous(memory_format=torch.channels_last):
        if inplace:
            raise ValueError('scatter_add_patches(inplace=True) needs a channels-last base')
        base, inplace = base.contiguous(memory_format=torch.channels_last), True
    map_relu = relu and not base_nonnegative
    # the patch rows take relu(base + f(values)) from the un-ReLU'd base; the map-wide
    # ReLU after them leaves them as they are (>= 0)
    out = base if inplace else F.relu(base) if map_relu else base.clone()
    if pointwise is None:
        add_at_rows(pixel_rows(out), pixel_rows(base), pixels, values, relu, buffers)
    else:  # the product added onto the base rows, ReLU fused
        pointwise.scatter_accumulate_(pixel_rows(out), pixel_rows(base), pixels, values,
                                      relu, buffers)
    return out.relu_() if inplace and map_relu else out


def upsample_patch_mask(mask: Tensor, grid: PatchGrid) -> Tensor:
    """Nearest upsampling of a ``[B, G, rows, cols]`` patch mask to the map size."""
    full = mask.repeat_interleave(grid.patch_h, dim=2).repeat_interleave(grid.patch_w, dim=3)
    return full[:, :, :grid.height, :grid.width]


def patch_halo_pixels(mask: Tensor, grid: PatchGrid, halo: int) -> Tensor:
    """``[B, G, H, W]``: the map pixels within ``halo`` (in both directions) of an
    active patch, i.e. what a 3x3 conv of dilation ``halo`` reads to compute the active
    patches (DynConv's dilated mask). Max-pooling keeps it differentiable with respect
    to ``mask`` (the gradient reaches the patch that covers each pixel)."""
    pixels = upsample_patch_mask(mask, grid)
    if halo == 0:
        return pixels
    return F.max_pool2d(pixels, 2 * halo + 1, stride=1, padding=halo)
