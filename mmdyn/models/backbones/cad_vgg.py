"""CAD-VGG: D2-Net's VGG16 with content-adaptive downsampling.

Hesse et al., "Content-Adaptive Downsampling in Convolutional Neural Networks",
CVPR-W 2023, Sec. 4.3 (keypoint description with D2-Net). The network is D2-Net's
VGG16 at output stride 4, 2 or 1 (the pools removed, later convolutions dilated,
:class:`~mmdyn.models.backbones.D2NetVGG`); the removed pools come back as *adaptive*
2x2 max-pools (Eq. 2 with max pooling): a mask source decides, per block of the fine
(output-stride) grid, whether it keeps full resolution. The following convolutions run
on the multi-resolution map (:mod:`mmdyn.ops.multires`) with the dilated network's
dilation on the fine grid, every inactive pixel reading its cell's value, which keeps
every cell's receptive field (Guarantee 1) and gives, with the same weights, the
output-stride-8 network when every block is downsampled and the dilated one when none
is (Guarantee 2).

``dense`` execution is the reference: the dilated network on the full grid, every
conv output replaced by its cells' values. ``sparse`` execution computes only the
active cells as rows (one gather of the nine taps and one matrix product per conv,
:func:`~mmdyn.ops.multires.conv3x3_rows`, as in CAD-ResNet, chunked, with the GEMM
kernel measured on the running CPU), the adaptive pools on rows
(:func:`~mmdyn.ops.cell_pool.max_pool_rows`). The products write straight into the
output with the ReLU fused, the maps chain through a trailing zero row (the taps outside
the image) and the large temporaries live on storage reused across forwards
(:class:`~mmdyn.ops.row_buffers.RowBuffers`). Multiply-adds are counted per conv from the
cells it computes.
"""
from typing import Dict

import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from mmdyn.models.mask_sources.basic import (build_mask_source, check_source_steps,
                                            source_keep_masks)
from mmdyn.ops import (BlockRecord, ForwardRecord, MaskTerms, PatchGrid, conv_macs,
                       fold_conv_bn)
from mmdyn.ops.cell_pool import max_pool_rows
from mmdyn.ops.multires import (CellLayout, adaptive_downsample, block_grid, check_keep_mask,
                                conv3x3_rows, fill_cells, rows_to_dense, step_levels)
from mmdyn.ops.row_buffers import RowBuffers
from .cad_resnet import ForcedKeepMasks
from .d2net_vgg import BLOCKS, D2NetVGG, check_output_stride
from .dynamic import DynamicBackboneMixin, tensor_state


class CellFeatures:
    """The output of a sparse CAD-VGG forward: the active cells' rows ``[n, C]`` and
    their :class:`CellLayout` on the fine grid. ``lookup`` reads the value at fine
    pixels without building the dense map."""

    def __init__(self, rows: Tensor, layout: CellLayout):
        self.rows, self.layout = rows, layout

    @property
    def shape(self):
        batch, height, width = self.layout.shape
        return batch, self.rows.shape[1], height, width

    def lookup(self, batch_index: int, ij: Tensor) -> Tensor:
        """``[n, C]`` values at integer fine positions ``ij`` ``[n, 2]`` (row, col)."""
        positions = torch.cat([ij.new_full((ij.shape[0], 1), batch_index), ij], 1)
        return self.rows.index_select(0, self.layout.rows_at(positions))

    def dense(self) -> Tensor:
        return rows_to_dense(self.rows, self.layout).contiguous()


class CellExtraction(nn.Module):
    """``backbone.extract`` as a module call (timing a CAD-VGG as its features use it)."""

    def __init__(self, backbone: 'CADVGG'):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor):
        return self.backbone.extract(x)


@MODELS.register_module()
class CADVGG(ForcedKeepMasks, DynamicBackboneMixin, D2NetVGG):
    """D2-Net's VGG16 with its last 1, 2 or 3 max-pools adaptive (output stride 8 ->
    4 / 2 / 1).

    Hesse et al., "Content-Adaptive Downsampling in Convolutional Neural Networks",
    CVPR-W 2023, Sec. 4.3.

    Args:
        output_stride (int): 4, 2 or 1, the fine grid (1, 2 or 3 adaptive pools).
            Default: 1.
        mask_source (dict): config of a registered mask source (``SiftKeypointMask``
            with one dilation per adaptive pool, ``RandomMask``, ``InverseMask``,
            ``FullResolutionMask``, ``DownsampleAllMask``, ...); it gets the
            Caffe-preprocessed input, the map entering the first adaptive pool, and
            one block grid per adaptive pool (blocks of 2^s x 2^s fine pixels for step
            s). Default: dict(type='FullResolutionMask').
        execution_mode (str): ``'sparse'`` (only the active cells) or ``'dense'`` (the
            reference on the full fine grid). Default: 'sparse'.
        chunk_rows (int): cells per gather-and-multiply in the sparse path (bounds
            memory). Default: 16384.
        reuse_buffers (bool): keep the sparse path's large temporaries (the gather
            buffer, two intermediate cell maps) between forwards instead of mapping
            them anew each time (page faults); they stay allocated with the module.
            The returned cells are always fresh memory. One forward at a time per
            module. Default: True.
        **kwargs: other arguments: :class:`D2NetVGG` (``d2net_pool3`` must be False).
    """

    mask_terms = MaskTerms('keep ratio', 'kept at full resolution', 'downsampled')
    EXECUTION_MODES = ('dense', 'sparse')

    def __init__(self, output_stride: int = 1,
                 mask_source: Dict = dict(type='FullResolutionMask'),
                 execution_mode: str = 'sparse', chunk_rows: int = 16384,
                 reuse_buffers: bool = True, **kwargs):
        check_output_stride(output_stride, (4, 2, 1))
        if kwargs.get('d2net_pool3'):
            raise ValueError('CADVGG makes pool3 an adaptive max-pool; d2net_pool3 must '
                             'be False')
        super().__init__(output_stride=output_stride, **kwargs)
        self.num_steps = 3 - self.kept_pools
        self.mask_source = build_mask_source(mask_source, 'CADVGG')
        if getattr(self.mask_source, 'learned', False):
            raise ValueError('CADVGG takes hand-crafted masks (keypoints, random, ...); '
                             f'{type(self.mask_source).__name__} is a learned source')
        self._bind_output_stride(self.mask_source)
        check_source_steps(self.mask_source, self.num_steps, 'CADVGG')
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f'chunk_rows={chunk_rows!r} must be a positive int')
        self.chunk_rows = chunk_rows
        if not isinstance(reuse_buffers, bool):
            raise ValueError(f'reuse_buffers={reuse_buffers!r} must be True or False')
        self.row_buffers = RowBuffers() if reuse_buffers else None
        self.external_masks = None
        self.set_execution_mode(execution_mode)

    def _bind_output_stride(self, source):
        """Mask sources that subsample an input-resolution map (keypoints) need the
        fine grid's stride and the input's Caffe mean: fill them in where unset, reject
        a different stride."""
        for module in source.modules():
            if getattr(module, 'mean_bgr', 'absent') is None:
                module.mean_bgr = self.mean_bgr
            stride = getattr(module, 'output_stride', 'absent')
            if stride is None:
                module.output_stride = self.output_stride
            elif stride != 'absent' and stride != self.output_stride:
                raise ValueError(f'{type(module).__name__}(output_stride={stride}) does not '
                                 f'match CADVGG(output_stride={self.output_stride}); leave '
                                 'it None to use the backbone\'s')

    # -- controls -------------------------------------------------------------------------

    def set_execution_mode(self, mode: str):
        if mode not in self.EXECUTION_MODES:
            raise ValueError(f'execution_mode={mode!r} is not one of {self.EXECUTION_MODES}')
        self.execution_mode = mode

    def set_masks(self, masks):
        """Use these keep masks (one ``[B, rows, cols]`` per adaptive pool, True = full
        resolution) instead of the mask source, until ``set_masks(None)``."""
        if masks is not None and (not isinstance(masks, (list, tuple))
                                  or len(masks) != self.num_steps):
            raise ValueError(f'set_masks expects a list of {self.num_steps} masks (one per '
                             'adaptive pool) or None')
        self.external_masks = masks

    def step_of_pool(self, pool: int) -> int:
        """Adaptive step (1..num_steps) of pool ``pool`` (1..3), 0 for a kept pool."""
        return max(0, pool - self.kept_pools)

    def keep_masks(self, inputs: Tensor, features: Tensor):
        height, width = features.shape[2:]
        grids = [block_grid(height, width, step) for step in range(1, self.num_steps + 1)]
        masks = source_keep_masks(self.active_mask_source(), self.external_masks, inputs, features,
                                  grids, 'adaptive pools')
        return [check_keep_mask(m.to(features.device), (features.shape[0], *g),
                                f'keep mask of adaptive pool {s + 1}')
                for s, (m, g) in enumerate(zip(masks, grids))]

    # -- DESIGN contract 7: benchmarkable from its config ----------------------------------

    def static_twin(self) -> D2NetVGG:
        """The dilated network at this output stride, this backbone's weights (eval,
        channels-last): what CAD-VGG computes with every block kept (Guarantee 2)."""
        return self._vgg_with_own_weights(self.output_stride)

    def coarse_twin(self) -> D2NetVGG:
        """VGG16 at output stride 8, this backbone's weights: what CAD-VGG computes with
        every block downsampled, the cheap end of its range."""
        return self._vgg_with_own_weights(8)

    def _vgg_with_own_weights(self, output_stride: int) -> D2NetVGG:
        twin = D2NetVGG(output_stride=output_stride, final_relu=self.final_relu,
                        base_channels=self.conv1_1.out_channels)
        missing, unexpected = twin.load_state_dict(self.state_dict(), strict=False)
        foreign = [k for k in unexpected if not k.startswith('mask_source.')]
        if missing or foreign:
            raise RuntimeError(f'CADVGG: the dense VGG16 does not match (missing '
                               f'{missing[:5]}, unexpected {foreign[:5]})')
        twin.mean_bgr, twin.weights_source = self.mean_bgr, self.weights_source
        return twin.eval().to(memory_format=torch.channels_last)

    def prepare_for_timing(self, mode: str = 'sparse') -> nn.Module:
        """Eval mode, execution ``mode``, channels-last; returns a module whose call is
        :meth:`extract`, what D2-Net's features read (sparse: the active cells, no dense
        map of the fine grid)."""
        self.eval()
        self.set_execution_mode(mode)
        return CellExtraction(self.to(memory_format=torch.channels_last))

    # -- forward --------------------------------------------------------------------------

    def forward(self, x: Tensor):
        out = self.extract(x)
        return (out.dense() if isinstance(out, CellFeatures) else out,)

    @torch.no_grad()
    def extract(self, x: Tensor):
        """The descriptor map: a dense ``[B, 512, H / s, W / s]`` tensor (``dense``
        execution) or :class:`CellFeatures` (``sparse``)."""
        inputs, sparse = x, self.execution_mode == 'sparse'
        static, records = {}, []
        layout = masks = None
        self._taps_cache, self._slot = {}, 1
        for block in BLOCKS:
            if block > 1:
                step = self.step_of_pool(block - 1)
                if step == 0:
                    x = self.pool(x, block - 1)
                elif layout is None:  # the first adaptive pool: from the dense map
                    masks = self.keep_masks(inputs, x)
                    full = CellLayout.full(x.shape[0], *x.shape[2:], device=x.device)
                    if sparse:  # every pixel a row (a free view of a channels-last map)
                        pixels = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
                        layout = CellLayout.from_levels(step_levels(full.levels, masks[0], 1))
                        x = max_pool_rows(pixels, full, layout, 1, *self._out_storage())
                    else:
                        x, levels = adaptive_downsample(x, full.levels, masks[0], 1, 'max')
                        layout = CellLayout.from_levels(levels)
                else:
                    levels = step_levels(layout.levels, masks[step - 1], step)
                    new_layout = CellLayout.from_levels(levels)
                    if sparse:
                        x = max_pool_rows(x, layout, new_layout, step, *self._out_storage())
                    else:
                        x, _ = adaptive_downsample(x, layout.levels, masks[step - 1], step,
                                                   'max')
                    layout = new_layout
            for name in BLOCKS[block]:
                conv = getattr(self, name)
                if layout is None:
                    x = self.activate(name, conv(x))
                    static[name] = float(x.shape[2] * x.shape[3] * self._macs(conv))
                    continue
                if sparse:  # ReLU fused into the product's write
                    relu = not self.is_last(name) or self.final_relu
                    x = self._conv_rows(conv, x, layout, relu, final=self.is_last(name))
                else:
                    x = fill_cells(self.activate(name, conv(x)), layout)
                records.append(self._record(name, conv, layout, masks, block))
        self.store_forward_record(ForwardRecord(static, records))
        self.level_map = layout.levels  # [B, h, w] on the fine grid: 0 = full resolution
        return CellFeatures(x, layout) if sparse else x

    def _out_storage(self, final: bool = False):
        """``(buffers, name)`` for the next sparse map: the two reused storages in turn
        (a map never shares one with the map it is computed from), none for the
        returned one."""
        if self.row_buffers is None or final:
            return None, None
        self._slot = 1 - self._slot
        return self.row_buffers, f'cells{self._slot}'

    def _conv_rows(self, conv, rows: Tensor, layout: CellLayout, relu: bool,
                   final: bool) -> Tensor:
        folded = self._folded(conv)
        key = (id(layout), folded.dilation)
        if key not in self._taps_cache:
            self._taps_cache = {k: v for k, v in self._taps_cache.items() if k[0] == id(layout)}
            self._taps_cache[key] = layout.tap_rows(layout.positions, folded.dilation)
        _, name = self._out_storage(final)
        return conv3x3_rows(rows, self._taps_cache[key], folded.matrix, folded.bias,
                            self.chunk_rows, relu, self.row_buffers, name)

    def _folded(self, conv):
        """The conv as a :class:`FoldedConv` (cached per weights version)."""
        key = (tensor_state(conv.weight), tensor_state(conv.bias))
        cache = conv.__dict__.setdefault('_cad_fold_cache', (None, None))
        if cache[0] != key:
            folded = fold_conv_bn(conv, None)
            conv.__dict__['_cad_fold_cache'] = (key, folded)
        return conv.__dict__['_cad_fold_cache'][1]

    @staticmethod
    def _macs(conv) -> int:
        return conv_macs(conv.in_channels, conv.out_channels, conv.kernel_size[0])

    def _record(self, name, conv, layout: CellLayout, masks, block) -> BlockRecord:
        """Per-sample multiply-adds from the cells this conv computes; the mask is the
        latest adaptive pool's keep mask on its block grid."""
        batch, height, width = layout.shape
        step = self.step_of_pool(block - 1)
        cells = layout.cells_per_sample().double()  # float32 is inexact beyond 2^24
        per_cell = self._macs(conv)
        return BlockRecord(name=name, mask=masks[step - 1].unsqueeze(1).float(),
                           activation_rate=cells / (height * width),
                           dense_flops=float(height * width * per_cell),
                           executed_flops=cells * per_cell,
                           grid=PatchGrid(height, width, 2 ** step))
