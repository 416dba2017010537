"""CAD-ResNet: content-adaptive downsampling.

Hesse et al., "Content-Adaptive Downsampling in Convolutional Neural Networks",
CVPR-W 2023. The network is the dilated, output-stride-8 ResNet (mmseg's ResNetV1c
layout: strides 1-2-1-1, dilations 1-1-2-4, contracted dilation), with the last one
or two downsampling steps of the strided network made adaptive: a mask source decides
per 2x2 block (4x4 at the second step) whether the block keeps full resolution. Stages
3-4 then run on the multi-resolution map (see :mod:`mmdyn.ops.multires`), every 3x3
conv with the dilated network's dilation on the fine grid, which keeps every cell's
receptive field (Guarantee 1) and gives, with the same weights, the strided network
when every block is downsampled and the dilated one when none is (Guarantee 2).

``dense`` execution is the reference: the dilated network on the full grid, every
block's output replaced by its cells' values (``fill``). ``sparse`` execution computes
only the active cells, as rows: 1x1 convs are matrix products, 3x3 convs gather their
nine taps. Parameter names are mmdet's ResNet's: dense ResNet checkpoints load
unchanged and nothing needs retraining (a learned mask source has its own weights).
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from mmdet.models.backbones.resnet import Bottleneck, ResNet
from mmengine.registry import MODELS

from mmdyn.models.mask_sources.basic import (build_mask_source, check_source_steps,
                                            source_keep_masks)
from mmdyn.ops import BlockRecord, ForwardRecord, MaskTerms, PatchGrid, conv_macs
from mmdyn.ops.gemm import gather_gemm
from mmdyn.ops.multires import (CellLayout, block_grid, check_keep_mask, dense_to_rows,
                                fill_cells, rows_to_dense, step_levels, zero_padded)
from .dynamic import check_number, fold_cache_of, folded_cached
from .resnet_parts import (DynamicResNetMixin, output_memory_format, plain_block_flops,
                           plain_res_layer, reject_unsupported, run_static_layer)

OS8_STRIDES, OS8_DILATIONS = (1, 2, 1, 1), (1, 1, 2, 4)
#: base output stride -> the stages whose downsampling step is adaptive
ADAPTIVE_STAGES = {16: (2,), 32: (2, 3)}
#: base output stride -> the strided network's layout (mmseg's ResNetV1c at that stride)
STRIDED_LAYOUTS = {16: dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
                   32: dict(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))}


class ForcedKeepMasks:
    """``set_forced_activation`` for the backbones whose masks come from a mask source
    (CAD-ResNet, CAD-VGG): random keep masks instead of the source (benchmarks, tests)."""

    def set_forced_activation(self, rate, seed: int = 0):
        """Random keep masks with probability ``rate`` per block
        (``RandomMask(keep_ratio=rate, seed=seed)``) instead of the mask source; ``None``
        gives control back to the mask source."""
        if rate is not None:
            check_number(rate, 'forced activation rate', 0.0, 1.0)
        # kept outside the module tree: not a submodule, not in the state dict
        self.__dict__['forced_source'] = None if rate is None else build_mask_source(
            dict(type='RandomMask', keep_ratio=rate, seed=seed), type(self).__name__)

    def active_mask_source(self):
        """The forced random source while one is set, else the configured one."""
        return self.__dict__.get('forced_source') or self.mask_source


@MODELS.register_module()
class CADResNet(ForcedKeepMasks, DynamicResNetMixin, ResNet):
    """Content-adaptive-downsampling ResNet (depth 50/101/152) on the output-stride-8
    grid.

    Hesse et al., "Content-Adaptive Downsampling in Convolutional Neural Networks",
    CVPR-W 2023.

    Args:
        depth (int): Depth of the ResNet, one of {50, 101, 152}.
        base_output_stride (int): 16 (stage 3's downsampling is adaptive: OS 16 -> 8)
            or 32 (stages 3 and 4: OS 32 -> 8). Default: 16.
        mask_source (dict): config of a registered mask source (``EdgeMask``,
            ``LearnedMask``, ``KeypointMask``, ``RandomMask``, ``InverseMask``,
            ``FullResolutionMask``, ``DownsampleAllMask``, ...).
            Default: dict(type='EdgeMask').
        execution_mode (str): ``'auto'`` (dense reference in training, sparse in
            eval), ``'dense'`` or ``'sparse'`` (inference only). Default: 'auto'.
        strides (Sequence[int]): strides of the first block of each stage; must be
            the output-stride-8 layout. Default: (1, 2, 1, 1).
        dilations (Sequence[int]): dilation of each stage; must be the
            output-stride-8 layout. Default: (1, 1, 2, 4).
        contract_dilation (bool): mmseg ``ResNetV1c`` semantics, the first block of a
            dilated stage uses half the dilation. Default: True.
        deep_stem (bool): replace the 7x7 stem conv with three 3x3 convs (mmseg's
            ``ResNetV1c``). Default: True.
        num_stages (int): number of ResNet stages; must be 4. Default: 4.
        multi_grid (Sequence[int], optional): mmseg ``ResNetV1c``'s multi-grid
            dilations; not supported, must be None. Default: None.
        temperature (float): initial Gumbel temperature of a mask source that has one
            (``LearnedMask``; hooks change it during training). Default: 1.0.
        **kwargs: other arguments: mmdet's ``ResNet`` (``style='pytorch'``, no
            ``dcn``, ``plugins`` or ``with_cp=True``; ``norm_cfg`` must be a
            BatchNorm).
    """

    mask_terms = MaskTerms('keep ratio', 'kept at full resolution', 'downsampled')
    arch_settings = {
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }
    EXECUTION_MODES = ('auto', 'dense', 'sparse')

    def __init__(self, depth: int, base_output_stride: int = 16,
                 mask_source: Dict = dict(type='EdgeMask'), execution_mode: str = 'auto',
                 strides: Sequence[int] = OS8_STRIDES,
                 dilations: Sequence[int] = OS8_DILATIONS, contract_dilation: bool = True,
                 deep_stem: bool = True, num_stages: int = 4,
                 multi_grid: Optional[Sequence[int]] = None, temperature: float = 1.0,
                 **kwargs):
        if depth not in self.arch_settings:
            raise ValueError(f'depth={depth!r} is not supported by CADResNet; choose one of '
                             f'{sorted(self.arch_settings)}')
        if base_output_stride not in ADAPTIVE_STAGES:
            raise ValueError(
                f'base_output_stride={base_output_stride!r}: CADResNet makes the last '
                f'downsampling steps of an output-stride-16 or -32 ResNet adaptive (one of '
                f'{sorted(ADAPTIVE_STAGES)}); the result runs at output stride 8')
        if tuple(strides) != OS8_STRIDES or tuple(dilations) != OS8_DILATIONS or num_stages != 4:
            raise ValueError(
                'CADResNet runs on the output-stride-8 grid: it needs num_stages=4, '
                f'strides={OS8_STRIDES} and dilations={OS8_DILATIONS} (the dilated '
                f'network); got num_stages={num_stages}, strides={tuple(strides)}, '
                f'dilations={tuple(dilations)}')
        reject_unsupported('CADResNet', multi_grid, **kwargs)
        if kwargs.get('style', 'pytorch') != 'pytorch':
            raise ValueError("CADResNet needs style='pytorch' (stride on the 3x3 conv)")
        self.contract_dilation = contract_dilation
        self.base_output_stride = base_output_stride
        self.adaptive_stages = ADAPTIVE_STAGES[base_output_stride]
        super().__init__(depth, strides=strides, dilations=dilations, deep_stem=deep_stem,
                         num_stages=num_stages, **kwargs)
        self.mask_source = build_mask_source(mask_source, 'CADResNet')
        check_source_steps(self.mask_source, len(self.adaptive_stages), 'CADResNet')
        if self.mask_source.learned and len(self.adaptive_stages) != 1:
            raise ValueError(f'{type(self.mask_source).__name__} supports one adaptive step: '
                             'use base_output_stride=16')
        self.external_masks = None
        self.finish_dynamic_init('auto', temperature)
        self.set_execution_mode(execution_mode)

    # -- controls ---------------------------------------------------------------------

    def set_execution_mode(self, mode: str):
        if mode not in self.EXECUTION_MODES:
            raise ValueError(f'execution_mode={mode!r} is not one of {self.EXECUTION_MODES}')
        self.execution_mode = mode

    def set_temperature(self, tau: float):
        self.temperature = float(check_number(tau, 'temperature', low=0, low_inclusive=False))
        if hasattr(self, 'mask_source') and hasattr(self.mask_source, 'temperature'):
            self.mask_source.temperature = self.temperature

    def set_masks(self, masks):
        """Use these keep masks (one ``[B, rows, cols]`` per adaptive step, True = full
        resolution) instead of the mask source, until ``set_masks(None)``."""
        if masks is not None and (not isinstance(masks, (list, tuple))
                                  or len(masks) != len(self.adaptive_stages)):
            raise ValueError(f'set_masks expects a list of {len(self.adaptive_stages)} '
                             'masks (one per adaptive step) or None')
        self.external_masks = masks

    def make_res_layer(self, block, inplanes, planes, num_blocks, stride=1, dilation=1,
                       avg_down=False, **kwargs):
        return plain_res_layer(block, inplanes, planes, num_blocks, stride, dilation,
                               avg_down, self.contract_dilation, **kwargs)

    def coarse_twin(self):
        """The strided network at ``base_output_stride`` with this backbone's weights
        (eval, BatchNorm folded, channels-last): the cheap end of CAD's range, as
        :meth:`static_twin` (the dilated OS8 network) is the dear end."""
        return self._with_own_weights(
            self._dense_resnet(**STRIDED_LAYOUTS[self.base_output_stride]))

    def folds_static_parts(self) -> bool:
        return self.sparse()

    def sparse(self) -> bool:
        if self.execution_mode == 'sparse' and self.training:
            raise RuntimeError('execution_mode="sparse" is inference-only (it folds '
                               'BatchNorm statistics); use "auto" or "dense" to train')
        return self.execution_mode == 'sparse' or (self.execution_mode == 'auto'
                                                   and not self.training)

    # -- forward ----------------------------------------------------------------------

    def keep_masks(self, inputs, features):
        height, width = features.shape[2:]
        grids = [block_grid(height, width, step + 1)
                 for step in range(len(self.adaptive_stages))]
        masks = source_keep_masks(self.active_mask_source(), self.external_masks, inputs, features,
                                  grids, 'adaptive steps')
        return [check_keep_mask(m, (features.shape[0], *g), f'keep mask of step {s + 1}')
                if not (m.dtype.is_floating_point and m.requires_grad) else m
                for s, (m, g) in enumerate(zip(masks, grids))]

    def forward(self, x):
        inputs, out_format = x, output_memory_format(x)
        sparse = self.sparse()
        x, stem_flops = self.stem_forward(x)
        static, outs, records = {'stem': stem_flops}, [], []
        levels = layout = last_mask = None
        self._tap_cache = {}  # tap rows per (layouts, dilation), for this forward only
        for i, layer_name in enumerate(self.res_layers):
            layer = getattr(self, layer_name)
            if i < min(self.adaptive_stages):
                size, flops = tuple(x.shape[2:]), 0
                for block in layer:
                    block_flops, size = plain_block_flops(block, size)
                    flops += block_flops
                static[layer_name] = flops
                x = run_static_layer(layer, x, sparse)
            else:
                if i == min(self.adaptive_stages):
                    masks = self.keep_masks(inputs, x)
                    levels = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long,
                                         device=x.device)
                    layout = CellLayout.from_levels(levels)
                step_mask, layout_in = None, layout
                if i in self.adaptive_stages:  # otherwise the stage keeps its layout
                    step = self.adaptive_stages.index(i) + 1
                    step_mask = masks[step - 1]
                    last_mask = (step_mask, step)
                    levels = step_levels(levels, step_mask.detach() > 0.5, step)
                    layout = CellLayout.from_levels(levels)
                if not sparse:
                    x = self._stage_dense(layer, layer_name, x, layout_in, layout, step_mask,
                                          last_mask, records)
                elif not bool(levels.any()):  # every cell kept: the dense route
                    x = self._stage_full(layer, layer_name, x, layout, last_mask, records)
                else:
                    if x.dim() == 4:  # a dense map (before the first adaptive stage, or
                        x = dense_to_rows(  # after a stage on the dense route)
                            x.contiguous(memory_format=torch.channels_last), layout_in)
                    x = self._stage_sparse(layer, layer_name, x, layout_in, layout,
                                           step_mask, last_mask, records)
            if i in self.out_indices:
                out = rows_to_dense(x, layout) if x.dim() == 2 else x
                outs.append(out.contiguous(memory_format=out_format))  # as the dense ResNet
        self.store_forward_record(ForwardRecord(static, records))
        return tuple(outs)

    def _stage_dense(self, layer, name, x, layout_in, layout, step_mask, last_mask, records):
        """Reference: the dilated blocks on the full grid, each output filled with its
        cells' values. A straight-through mask keeps its gradient: the full-resolution
        pixels take the block output, the others its filled value."""
        keep = None
        if step_mask is not None and step_mask.requires_grad:
            keep = F.interpolate(step_mask.unsqueeze(1), scale_factor=2, mode='nearest')
            keep = keep[:, :, :x.shape[2], :x.shape[3]]
        for k, block in enumerate(layer):
            y = block(x)
            filled = fill_cells(y, layout)
            x = filled if keep is None else filled + keep * (y - filled)
            self._record(records, f'{name}.{k}', block, layout_in if k == 0 else layout,
                         layout, last_mask)
        return x

    def _stage_full(self, layer, name, x, layout, last_mask, records):
        """The dense route of a stage whose cells are all kept: the output-stride-8
        network's blocks (BatchNorm folded) on the dense map, which is what the cell
        executor computes there (Guarantee 2) without gathering nine taps per pixel."""
        if x.dim() == 2:  # rows of a full layout are the channels-last pixel rows
            batch, height, width = layout.shape
            x = x.view(batch, height, width, -1).permute(0, 3, 1, 2)
        x = run_static_layer(layer, x, True)
        for k, block in enumerate(layer):
            self._record(records, f'{name}.{k}', block, layout, layout, last_mask)
        return x

    def _stage_sparse(self, layer, name, rows, layout_in, layout, step_mask, last_mask,
                      records):
        """Only the active cells, as rows (``step_mask`` is already in ``layout``)."""
        for k, block in enumerate(layer):
            source = layout_in if k == 0 else layout
            rows = self._block_rows(block, rows, source, layout)
            self._record(records, f'{name}.{k}', block, source, layout, last_mask)
        return rows

    def _block_rows(self, block, rows, source: CellLayout, target: CellLayout):
        """One bottleneck on cells: ``rows`` are ``source``'s cells, the result
        ``target``'s (equal layouts except at an adaptive step)."""
        conv1, conv2, conv3 = (self._folded(block, i) for i in (1, 2, 3))
        hidden = conv1.rows(rows).relu_()
        taps = self._taps(source, target, conv2.dilation)
        # the nine taps gathered tile by tile into the product (the measured kernel:
        # a gathered copy of every tap would be 9x the map, written to fresh memory)
        hidden = gather_gemm(zero_padded(hidden), taps, conv2.matrix, conv2.bias, relu=True)
        # The shortcut reads the input at the output cells (a strided 1x1 conv samples).
        identity = rows if source is target else rows.index_select(
            0, source.rows_at(target.positions))
        if block.downsample is not None:
            shortcut = self._folded(block, 'downsample')
            identity = shortcut.rows(identity)  # a fresh tensor
            return conv3.accumulate_(identity, hidden, relu=True)
        return conv3.rows(hidden).add_(identity).relu_()

    def _taps(self, source, target, dilation):
        """Tap rows, computed once per (layouts, dilation) and forward (the layouts
        are alive for the whole forward, so their ids are stable keys)."""
        key = (id(source), id(target), dilation)
        if key not in self._tap_cache:
            self._tap_cache[key] = source.tap_rows(target.positions, dilation)
        return self._tap_cache[key]

    def _folded(self, block, which):
        """BatchNorm-folded weights of a block's conv (cached per weights version)."""
        if which == 'downsample':
            conv, norm = block.downsample[-2], block.downsample[-1]
        else:
            conv, norm = getattr(block, f'conv{which}'), getattr(block, f'norm{which}')
        return folded_cached(fold_cache_of(block), f'cells.{which}', conv, norm)

    def _record(self, records, name, block, source: CellLayout, target: CellLayout, mask):
        """Per-sample FLOPs from the cells each conv computes (output stride 8 = dense);
        ``mask``: (keep mask, step) of the latest adaptive step, on its block grid."""
        batch, height, width = target.shape
        pixels = height * width
        c_in, mid, c_out = block.conv1.in_channels, block.conv2.out_channels, \
            block.conv3.out_channels
        per_out = conv_macs(mid, mid, 3) + conv_macs(mid, c_out, 1) + (
            conv_macs(c_in, c_out, 1) if block.downsample is not None else 0)
        per_in = conv_macs(c_in, mid, 1)
        cells_in = source.cells_per_sample().float()
        cells_out = target.cells_per_sample().float()
        keep, step = mask
        records.append(BlockRecord(
            name=name, mask=keep.unsqueeze(1).float(),
            grid=PatchGrid(height, width, 2 ** step), activation_rate=cells_out / pixels,
            dense_flops=float(pixels * (per_in + per_out)),
            executed_flops=cells_in * per_in + cells_out * per_out))
