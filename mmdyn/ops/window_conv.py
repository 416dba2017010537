"""A convolution on the windows of active patches: group by group, in one product, or
straight from the map.

:func:`~mmdyn.ops.patches.border_groups` splits the active patches of a map that ``S``
does not divide into the whole patches and up to three groups of border patches cropped
to the map, each with windows of its own size. Three ways compute their output rows:

* ``group_by_group``: the VALID conv on each group's stack of windows (oneDNN), one call
  per group;
* ``one_product``: the windows of every group gathered as rows of one table and the
  conv a product on the tap rows of each output pixel
  (:func:`~mmdyn.ops.gemm.gather_gemm`), one call for all groups;
* ``from_map``: no windows at all (LAS Sec. 3.4's gather fused into the conv): the tap
  rows of each output pixel point into the channels-last map itself (taps outside it
  read zeros, the ReLU of the input applied as they are read), and the native
  gather-GEMM gathers them tile by tile while it multiplies. Neighbouring patches share
  the halo of their windows; the windows copy it once per patch ((S + 2)^2 / S^2 of the
  active pixels at S = 7) into memory, this way gathers taps only into the product's
  cache-sized tile.

Border groups hold few windows of odd sizes, for which a call of their own costs
several times their share: in a stage-3 block of LAS-ResNet-101 at 800x1216 (S = 7 on a
50x76 map, 256 channels) three border stacks of 76 output pixels took 1.09 ms, 0.39 ms
at the dense conv's rate, and the block ran 20.0 ms in one product against 21.1 ms
group by group at r = 0.3 (26.5 against 28.3 ms at r = 0.5); the whole backbone 899
against 910 ms at r = 0.3 and 1082 against 1112 ms at r = 0.5. SAR-ResNet-50's
refinement windows (31x46 pixels, 32 or 64 channels) run faster group by group: its
backbone took 673 ms in one product against 656 ms (r = 0.5; AMD EPYC family 25, 2
threads, medians of alternating rounds in one process, 2026-12-05). From the map,
LAS-ResNet-101's stage 3 (23 blocks, S = 7) took 503 / 650 / 803 ms against 513 / 657 /
814 ms in one product at r = 0.3 / 0.5 / 0.7, while its stages 1 and 2 (whole 8x8 and
4x4 patches, one stack each) ran faster on the window stack (94.5 against 98.0 ms and
141.3 against 144.8 ms at r = 0.3; same machine and day, medians of 25 and 15
alternating calls of the stage). So :mod:`.kernel_choice` times every way per shape
class where the code runs (and chose as these figures did), maps of whole patches only
(one group) included.
"""
import functools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .dense_conv import pixel_class
from .gemm import dtype_name, gather_gemm
from .kernel_choice import CHOOSER, KernelOp, Serves
from .patches import (PatchGrid, Window, active_patches, border_groups, border_pixels,
                      cropped_window, gather_windows, pair, pixel_rows, rows_group_by_group)
from .pixel_sampling import conv_tap_rows
from .row_buffers import RowBuffers, buffer_slot
from .sparse_conv import FoldedConv


class WindowConv:
    """``patches_for(cells, window)`` for :func:`~mmdyn.ops.patches.grouped_rows`:
    ``conv`` (a :class:`FoldedConv`, VALID) on the windows of ``source`` that feed
    ``cells`` (gathered into the slot ``'windows'`` of ``buffers``), ReLU'd first if
    ``relu_input``, its output ReLU'd if ``relu``; several groups at once by the
    way measured faster for their shape class (:meth:`rows_of_groups`)."""

    def __init__(self, conv, source: Tensor, buffers: Optional[RowBuffers] = None,
                 relu_input: bool = False, relu: bool = False):
        self.conv, self.source, self.buffers = conv, source, buffers
        self.relu_input, self.relu = relu_input, relu

    def __call__(self, cells: Tensor, window: Window) -> Tensor:
        return self.conv(gather_windows(self.source, cells, window, self.buffers,
                                        relu=self.relu_input), valid=True, relu=self.relu)

    def rows_of_groups(self, groups, grid: PatchGrid, window: Window,
                       pixels: Optional[Tensor] = None) -> Tensor:
        """The output rows of :func:`~mmdyn.ops.patches.border_groups`' ``groups``, group
        after group (``pixels``: their ids on the output map,
        :func:`~mmdyn.ops.patches.border_pixels`, when the caller has them): a grouped
        conv or a recorded gradient group by group, else the way chosen for the shape
        class."""
        if self.conv.groups != 1 or (torch.is_grad_enabled() and self.source.requires_grad):
            return rows_group_by_group(groups, grid, window, self)
        impl = CHOOSER.choose('window_groups', self.shape_class(grid, window),
                              self.source.device)
        if pixels is None and impl == 'from_map':
            pixels = border_pixels(groups, grid)
        return WINDOW_GROUPS.candidates[impl](self, groups, grid, window, pixels)

    def shape_class(self, grid: PatchGrid, window: Window) -> tuple:
        """dtype, batch, channels, kernel, stride, dilation, the output map's pixel-count
        class, the patch size, the border patches' extent inside the map (what sizes
        the border groups' windows) and the window: maps of other sizes in one class
        (input images of varying shapes) share a choice."""
        source, weight = self.source, self.conv.weight
        last_h = grid.height - (grid.rows - 1) * grid.patch_h
        last_w = grid.width - (grid.cols - 1) * grid.patch_w
        return (dtype_name(source), source.shape[0], source.shape[1], weight.shape[0],
                weight.shape[-1], self.conv.stride, self.conv.dilation,
                pixel_class(grid.height * grid.width), grid.patch_h, grid.patch_w, last_h,
                last_w, *pair(window.step), *pair(window.size), *pair(window.offset))

    def one_product(self, groups, grid: PatchGrid, window: Window) -> Tensor:
        """Every group's windows as rows of one table (the slot ``'window_table'`` of
        ``buffers``), the conv one product on their tap rows."""
        source, conv = self.source, self.conv.cast(self.source.dtype)
        windows = [cropped_window(window, grid, extent) for _, extent in groups]
        counts = [group.shape[0] * pair(w.size)[0] * pair(w.size)[1]
                  for (group, _), w in zip(groups, windows)]
        table_shape = (sum(counts), source.shape[1])
        table = buffer_slot(self.buffers, 'window_table', table_shape, source)
        if table is None:
            table = source.new_empty(table_shape)
        taps, start = [], 0
        for (group, _), group_window, count in zip(groups, windows, counts):
            gather_windows(source, group, group_window, relu=self.relu_input,
                           out=table[start:start + count])
            taps.append(window_tap_rows(group.shape[0], pair(group_window.size),
                                        conv.weight.shape[-1], conv.stride, conv.dilation,
                                        start, source.device))
            start += count
        return gather_gemm(table, torch.cat(taps), conv.matrix, conv.bias, relu=self.relu)

    def from_map(self, grid: PatchGrid, window: Window, pixels: Tensor) -> Tensor:
        """The conv at the output ``pixels`` (ids on ``grid``'s map) as one product on
        tap rows read straight from the source map's pixel rows: the padded conv
        whose VALID windows these are (padding = the window's offset: the window of
        patch ``i`` starts at ``i * S * stride - offset``)."""
        source, conv = self.source, self.conv.cast(self.source.dtype)
        batch, _, height, width = source.shape
        taps = conv_tap_rows(pixels, (grid.height, grid.width), (height, width), conv.stride,
                             conv.dilation, pair(window.offset)[0],
                             zero_row=batch * height * width, kernel=conv.weight.shape[-1])
        return gather_gemm(pixel_rows(source), taps, conv.matrix, conv.bias, relu=self.relu,
                           relu_table=self.relu_input, zero_past_end=True)

    def reads_map_directly(self, grid: PatchGrid, window: Window) -> bool:
        """The windows are those of one padded conv on the whole map (what
        :meth:`from_map` computes): a square kernel, windows ``S * stride`` apart, the
        same offset (padding) on both axes."""
        kernel_h, kernel_w = self.conv.weight.shape[-2:]
        offset_h, offset_w = pair(window.offset)
        return kernel_h == kernel_w and offset_h == offset_w and pair(window.step) == (
            grid.patch_h * self.conv.stride, grid.patch_w * self.conv.stride)


def window_tap_rows(count: int, size: Tuple[int, int], kernel: int, stride: int,
                    dilation: int, first: int, device) -> Tensor:
    """``[count * out_h * out_w, kernel ** 2]``: for every output pixel of a VALID
    ``kernel x kernel`` conv on ``count`` stacked ``size`` windows whose pixel rows
    start at row ``first`` of a table (window after window, row-major), the table rows
    of its taps, in the order of :attr:`FoldedConv.matrix` (tap row, tap column)."""
    one_window = _one_window_taps(tuple(size), kernel, stride, dilation, torch.device(device))
    starts = torch.arange(first, first + count * size[0] * size[1], size[0] * size[1],
                          device=device)
    return (starts.view(-1, 1, 1) + one_window).view(-1, kernel * kernel)


@functools.lru_cache(maxsize=256)
def _one_window_taps(size: Tuple[int, int], kernel: int, stride: int, dilation: int,
                     device: torch.device) -> Tensor:
    """``[out_h * out_w, kernel ** 2]`` tap rows of one window starting at row 0 (a few
    window shapes per network: kept per device)."""
    reach = (kernel - 1) * dilation
    out_h, out_w = (size[0] - reach - 1) // stride + 1, (size[1] - reach - 1) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f'window_tap_rows: a {size} window is smaller than the '
                         f'{kernel}x{kernel} kernel of dilation {dilation}')
    taps = torch.arange(kernel, device=device) * dilation
    rows = (torch.arange(out_h, device=device) * stride).view(-1, 1, 1, 1) + taps.view(1, 1, -1, 1)
    cols = (torch.arange(out_w, device=device) * stride).view(1, -1, 1, 1) + taps.view(1, 1, 1, -1)
    return (rows * size[1] + cols).view(out_h * out_w, kernel * kernel)


def _timing_inputs(shape_class):
    """A conv of the class's channels on a map of about the class's pixel count whose
    border patches have the class's extent, and the groups of a mask at rate 1/2 over
    its patch grid, the corner patch on (every border group present where the grid has
    them), with their pixel ids."""
    (dtype, batch, channels, out_channels, kernel, stride, dilation, pixels, patch_h,
     patch_w, last_h, last_w, *window) = shape_class
    side = math.isqrt(pixels)
    out_h = (max(1, round(side / patch_h)) - 1) * patch_h + last_h
    out_w = (max(1, round(side / patch_w)) - 1) * patch_w + last_w
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)
    source = torch.randn(batch, channels, (out_h - 1) * stride + 1, (out_w - 1) * stride + 1,
                         generator=generator).to(dtype).contiguous(
        memory_format=torch.channels_last)
    conv = FoldedConv(torch.randn(out_channels, channels, kernel, kernel,
                                  generator=generator).to(dtype),
                      torch.zeros(out_channels, dtype=dtype), stride, dilation)
    grid = PatchGrid(out_h, out_w, (patch_h, patch_w))
    mask = (torch.rand(batch, 1, *grid.shape, generator=generator) < 0.5).float()
    mask[:, :, -1, -1] = 1
    step_h, step_w, size_h, size_w, offset_h, offset_w = window
    window = Window((step_h, step_w), (size_h, size_w), (offset_h, offset_w))
    groups = border_groups(active_patches(mask), grid)
    return WindowConv(conv, source, RowBuffers()), groups, grid, window, border_pixels(
        groups, grid)


def _group_by_group(window_conv: WindowConv, groups, grid: PatchGrid, window: Window,
                    pixels=None):
    return rows_group_by_group(groups, grid, window, window_conv)


def _one_product(window_conv: WindowConv, groups, grid: PatchGrid, window: Window,
                 pixels=None):
    return window_conv.one_product(groups, grid, window)


def _from_map(window_conv: WindowConv, groups, grid: PatchGrid, window: Window, pixels):
    if not window_conv.reads_map_directly(grid, window):  # not one conv's windows
        return _one_product(window_conv, groups, grid, window)
    return window_conv.from_map(grid, window, pixels)


#: one product and the product from the map are timed against the convs on CPU tensors
#: only (the timing inputs hold the map inside a WindowConv, which the chooser does not
#: move to another device); CUDA tensors run group by group (cuDNN)
_CPU_ONLY = Serves(devices=frozenset({'cpu'}))
WINDOW_GROUPS = CHOOSER.register(KernelOp(
    'window_groups', {'group_by_group': _group_by_group, 'one_product': _one_product,
                      'from_map': _from_map},
    _timing_inputs, {'one_product': _CPU_ONLY, 'from_map': _CPU_ONLY}))


def conv_on_windows(conv, source: Tensor, buffers: Optional[RowBuffers] = None,
                    relu_input: bool = False, relu: bool = False) -> WindowConv:
    """``patches_for(cells, window)`` for :func:`~mmdyn.ops.patches.grouped_rows`: see
    :class:`WindowConv`."""
    return WindowConv(conv, source, buffers, relu_input, relu)

