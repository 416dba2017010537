"""LAS-ResNet: latency-aware spatial-wise dynamic ResNet.

Han et al., "Latency-aware Spatial-wise Dynamic Networks",
NeurIPS 2022. Every residual block gets a masker that decides, per S x S patch of the
block's output, whether the residual branch is computed:

    y = relu(x_identity + M * F(x))                        (LAS Fig. 2, block output)

with M the nearest-upsampled patch mask from the masker (adaptive pool to the patch
grid, 1x1 conv, 2 logits, straight-through Gumbel; LAS Sec. 3.5). ``masked`` mode runs
F densely and multiplies (training and the reference); ``sparse`` mode runs conv1
densely fused with the masker (one conv with C+1 outputs, Appendix B.1), gathers the
active patches with their halo, runs conv2/conv3 on the stack and scatter-adds the
result onto the identity.

The module tree and parameter names are those of mmdet's ``ResNet`` (plus one
``masker`` per block), so torchvision/mmdet/mmseg ResNet checkpoints load with only
the maskers missing. mmseg ``ResNetV1c`` arguments (``deep_stem``, ``strides``,
``dilations``, ``contract_dilation``) are accepted so it drops into DeepLabv3/PSPNet.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmengine.registry import MODELS

from mmdyn.ops import (FoldedConv, ForwardRecord, MaskTerms, PatchGrid, PatchMasker, Window,
                       active_patches, border_groups, border_pixels, conv_macs,
                       conv_on_windows, conv_tap_rows, gemm_acc, grouped_rows, patch_extents,
                       patch_halo_pixels, patch_pixels, pixel_rows, sampled_pixels,
                       scatter_add_rows, upsample_patch_mask)
from mmdyn.ops.gate import conv1_and_gate
from mmdyn.ops.multires import conv3x3_rows
from .dynamic import DynamicBlockMixin, check_granularity, check_number, fold_sources
from .resnet_parts import (DynamicResNetMixin, check_norm_cfg, output_memory_format,
                           plain_res_layer)


def _out_size(size: int, stride: int) -> int:
    """Output length of a 3x3 conv with padding == dilation."""
    return (size - 1) // stride + 1


class _LASBlockMixin(DynamicBlockMixin):
    """What LAS adds to mmdet's ResNet blocks: validation, the masker, the records."""

    def init_las(self, granularity: int, name: str, mask_init_bias: float):
        if getattr(self, 'with_dcn', False) or getattr(self, 'with_plugins', False):
            raise ValueError(f'{name}: LASResNet does not support dcn/plugins '
                             '(the sparse executor covers plain 1x1/3x3 convs)')
        if self.with_cp:
            raise ValueError(f'{name}: LASResNet does not support with_cp=True')
        self.init_dynamic(granularity, name)
        self.masker = PatchMasker(self.conv1.in_channels, mask_init_bias)
        self.ran_densely = False  # the last forward took the dense route

    def new_parts(self) -> tuple:
        return (self.masker, )

    def decide(self, x, grid: PatchGrid):
        """The masker's mask, or a forced one (benchmarks, tests): the masker runs
        either way, as its FLOPs are recorded (the bottleneck's sparse path likewise
        pays for its fused gate channel)."""
        mask = self.masker(x, grid.shape, self.temperature)
        forced = self.forced_mask(x.shape[0], grid, x)
        return mask if forced is None else forced

    def downsample_dense(self, x, sparse: bool):
        """The identity branch, always dense; BatchNorm folded on the sparse path."""
        if self.downsample is None:
            return x
        if not sparse:
            return self.downsample(x)
        *pools, conv, bn = self.downsample
        for pool in pools:
            x = pool(x)
        return self.folded('downsample', conv, bn)(x)

    def downsample_flops(self, out_pixels: int) -> int:
        if self.downsample is None:
            return 0
        conv = self.downsample[-2]
        return out_pixels * conv_macs(conv.in_channels, conv.out_channels, 1)

    def gate_flops(self, in_pixels: int, grid: PatchGrid) -> int:
        """Pool over the input plus two logits per patch (unfused form)."""
        channels = self.conv1.in_channels
        return in_pixels * channels + grid.rows * grid.cols * 2 * channels

    def masked_output(self, identity, residual, mask, grid):
        return self.relu(identity + residual * upsample_patch_mask(mask, grid))

    def takes_dense_route(self, x, mask, grid, run_sparse, run_dense) -> bool:
        """The mixin's route choice; a bottleneck's crossover may come from a latency
        profile (:meth:`route_shape`)."""
        return super().takes_dense_route(x, mask, grid, run_sparse, run_dense,
                                         shape=self.route_shape(x))

    def route_shape(self, x) -> Optional[tuple]:
        """The block as the latency predictor's engine model takes it (a bottleneck of
        dilation 1 and batch 1), or None: its crossover is then measured."""
        conv3 = getattr(self, 'conv3', None)
        if conv3 is None or x.shape[0] != 1 or self.conv2.dilation[0] != 1:
            return None
        return (self.conv1.in_channels, self.conv2.in_channels, conv3.out_channels,
                x.shape[2], x.shape[3], self.granularity, self.conv2.stride[0],
                self.downsample is not None)

    def sparse_output(self, x, identity, index, grid, patches_for=None, pointwise=None):
        """relu(identity + scatter(patches)) on the active patches ``index``, a group of
        :func:`border_groups` at a time (border patches cropped to the map):
        ``patches_for(group, window)`` computes a group's patches from its windows of
        conv2's input (``window``, cropped likewise). The identity is updated in place
        when it is a fresh tensor (the downsample output) or when the owning backbone
        says the block's input is not used afterwards (and no autograd graph is
        recorded). A block's input is a ReLU output (the previous block's, or the stem's
        max-pooled one): an identity that is the input (or, in a crossover measurement,
        its copy) needs no ReLU outside the patches."""
        reuse = self.may_overwrite(x, identity)
        nonnegative = self.downsample is None
        if index.numel() == 0:
            if nonnegative:
                return identity if reuse else identity.clone()
            return identity.relu_() if reuse else F.relu(identity)
        groups = border_groups(index, grid)
        pixels = border_pixels(groups, grid)
        return scatter_add_rows(identity, grouped_rows(groups, grid, self.conv2_window,
                                                       patches_for, pixels),
                                pixels, relu=True, inplace=reuse,
                                pointwise=pointwise, buffers=self.row_buffers,
                                base_nonnegative=nonnegative)


class LASBottleneck(_LASBlockMixin, Bottleneck):
    """mmdet Bottleneck + masker; conv1 is dense and fused with the masker at
    inference, conv2 (3x3, strided/dilated) and conv3 (1x1) run on active patches."""

    def __init__(self, *args, granularity: int = 1, block_name: str = '',
                 mask_init_bias: float = 3.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.style != 'pytorch':
            raise ValueError(f"{block_name}: LASResNet needs style='pytorch' (stride on "
                             f"the 3x3 conv), got style={self.style!r}")
        self.init_las(granularity, block_name, mask_init_bias)
        # Window of conv1's output that feeds one output patch of conv2.
        stride, dilation = self.conv2.stride[0], self.conv2.dilation[0]
        size = self.granularity
        self.conv2_window = Window(size * stride, (size - 1) * stride + 2 * dilation + 1,
                                   dilation)

    def forward(self, x):
        grid = PatchGrid(_out_size(x.shape[2], self.conv2.stride[0]),
                         _out_size(x.shape[3], self.conv2.stride[0]), self.granularity)
        self.ran_densely = False
        if self.use_sparse_path():
            out, mask = self._forward_sparse(x, grid)
        else:
            out, mask = self._forward_masked(x, grid)
        self._record(x, grid, mask)
        return out

    def _forward_masked(self, x, grid):
        mask = self.decide(x, grid)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.masked_output(self.downsample_dense(x, False), out, mask, grid), mask

    def _forward_sparse(self, x, grid):
        x = x.contiguous(memory_format=torch.channels_last)
        # conv1 and the gate's logit difference on the patch grid: the difference pooled
        # as one more conv1 output (App. B.1) or computed on the pooled input, whichever
        # the kernel choice measured faster. Forced masks (benchmarks, tests) still pay
        # for the gate.
        out1, logits = conv1_and_gate(x, self.folded('conv1', self.conv1, self.norm1),
                                      self.gate_conv(), self.fused_conv1_gate, grid.shape)
        mask = self.forced_mask(x.shape[0], grid, x)
        if mask is None:
            mask = (logits >= 0).to(x.dtype)
        identity = self.downsample_dense(x, True)
        if self.takes_dense_route(
                x, mask, grid,
                lambda m: self._residual_sparse(x, out1, identity.clone(), active_patches(m), grid),
                lambda m: self._residual_dense(x, out1, identity.clone(), m, grid)):
            return self._residual_dense(x, out1, identity, mask, grid), mask
        return self._residual_sparse(x, out1, identity, active_patches(mask), grid), mask

    def _residual_sparse(self, x, out1, identity, index, grid):
        """relu(identity + scatter(conv3(conv2(windows)))) on the active patches."""
        hidden = conv_on_windows(self.folded('conv2', self.conv2, self.norm2), out1,
                                 self.row_buffers, relu_input=True, relu=True)
        conv3 = self.folded('conv3', self.conv3, self.norm3)  # fused into the scatter-add
        return self.sparse_output(x, identity, index, grid, hidden, pointwise=conv3)

    def _residual_dense(self, x, out1, identity, mask, grid):
        """relu(identity + M * conv3(conv2(out1))), conv2/conv3 dense, BatchNorm folded:
        conv3 accumulates onto the identity with its bias and the ReLU fused
        (``gemm_acc``). A partial mask zeroes conv2's output (4x narrower than
        conv3's) at the inactive pixels, where conv3's bias is taken off the identity
        first."""
        hidden = self.folded('conv2', self.conv2, self.norm2)(F.relu(out1), relu=True)
        hidden = hidden.contiguous(memory_format=torch.channels_last)
        conv3 = self.folded('conv3', self.conv3, self.norm3).cast(hidden.dtype)
        reuse = self.may_overwrite(x, identity)
        out = identity if reuse else identity.clone()
        out = out.contiguous(memory_format=torch.channels_last)
        if bool((mask < 1).any()):
            # M (W h + b) = W (M h) + b - (1 - M) b: conv2's rows zeroed and the identity
            # rows less b at the inactive pixels only (the route runs at high rates)
            inactive = patch_pixels(active_patches(1 - mask), grid)[0]
            pixel_rows(hidden).index_fill_(0, inactive, 0.0)
            out_rows = pixel_rows(out)
            out_rows.index_copy_(0, inactive, out_rows.index_select(0, inactive).sub_(
                conv3.bias.to(out.dtype)))
        gemm_acc(pixel_rows(out), pixel_rows(hidden), conv3.matrix, conv3.bias, relu=True)
        return out

    def gate_conv(self) -> FoldedConv:
        """The masker's logit difference as a 1x1 conv (cached)."""
        return self.cached('gate', (self.masker.weight, self.masker.bias),
                           lambda: FoldedConv(*self.masker.decision_weight()))

    def fused_conv1_gate(self) -> FoldedConv:
        """conv1 (BatchNorm folded) with the gate's logit difference appended as one
        more output channel; cached."""
        def build():
            conv1 = self.folded('conv1', self.conv1, self.norm1)
            gate_weight, gate_bias = self.masker.decision_weight()
            return FoldedConv(torch.cat([conv1.weight, gate_weight]),
                              torch.cat([conv1.bias, gate_bias]))
        # The sources of conv1's fold (BatchNorm included only while it is there: after
        # mmcv's fuse_conv_bn, norm1 is an nn.Identity and conv1 carries a bias).
        sources = fold_sources(self.conv1, self.norm1) + (self.masker.weight,
                                                          self.masker.bias)
        return self.cached('conv1+gate', sources, build)

    def _record(self, x, grid, mask):
        in_pixels = x.shape[2] * x.shape[3]
        out_pixels = grid.height * grid.width
        c_in, mid, c_out = self.conv1.in_channels, self.conv2.out_channels, self.conv3.out_channels
        conv1_flops = in_pixels * conv_macs(c_in, mid, 1)
        per_pixel = conv_macs(mid, mid, 3) + conv_macs(mid, c_out, 1)
        computed = (mask * patch_extents(grid, x.device)).sum(dim=(1, 2, 3))
        always = conv1_flops + self.downsample_flops(out_pixels) + in_pixels * c_in
        self.store_record(grid, mask, computed,
                          dense_flops=conv1_flops + out_pixels * per_pixel
                          + self.downsample_flops(out_pixels),
                          executed_flops=always + computed * per_pixel,
                          dense_route_flops=always + out_pixels * per_pixel)


class LASBasicBlock(_LASBlockMixin, BasicBlock):
    """mmdet BasicBlock + masker; conv2 runs on the active patches, gathered with their
    halo from conv1's output. conv1 (3x3, strided) runs either densely
    (``sparse_conv1=False``, as in the bottleneck) or, with ``sparse_conv1=True``, only
    at the conv1 output pixels conv2 reads for the active patches: the patch mask
    dilated by conv2's halo (DynConv's dilated mask), computed once per pixel (tap rows
    and one GEMM), never once per overlapping window."""

    def __init__(self, *args, granularity: int = 1, block_name: str = '',
                 mask_init_bias: float = 3.0, sparse_conv1: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_las(granularity, block_name, mask_init_bias)
        self.sparse_conv1 = bool(sparse_conv1)
        dilation = self.conv2.dilation[0]
        self.conv2_window = Window(self.granularity, self.granularity + 2 * dilation,
                                   dilation)

    def forward(self, x):
        grid = PatchGrid(_out_size(x.shape[2], self.conv1.stride[0]),
                         _out_size(x.shape[3], self.conv1.stride[0]), self.granularity)
        mask = self.decide(x, grid)
        self.ran_densely = False
        if self.use_sparse_path():
            out = self._forward_sparse(x, grid, mask)
        else:
            out = self._forward_masked(x, grid, mask)
        self._record(x, grid, mask)
        return out

    def _forward_masked(self, x, grid, mask):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.masked_output(self.downsample_dense(x, False), out, mask, grid)

    def conv1_region(self, mask, grid):
        """``[B, 1, H, W]`` conv1 output pixels that conv2 reads for the active patches."""
        return patch_halo_pixels(mask, grid, self.conv2.dilation[0])

    def _forward_sparse(self, x, grid, mask):
        x = x.contiguous(memory_format=torch.channels_last)
        index = active_patches(mask)
        identity = self.downsample_dense(x, True)
        if index.numel() == 0:
            return self.sparse_output(x, identity, index, grid)
        dense_out1 = None if self.sparse_conv1 else self._conv1_dense(x)

        def out1_for(m):  # conv1's output where conv2 reads it for the mask m
            return dense_out1 if dense_out1 is not None else self._conv1_on_region(x, m, grid)

        def dense_conv1():
            return dense_out1 if dense_out1 is not None else self._conv1_dense(x)

        if self.takes_dense_route(
                x, mask, grid,
                lambda m: self._residual_sparse(x, out1_for(m), identity.clone(),
                                                active_patches(m), grid),
                lambda m: self._residual_dense(dense_conv1(), identity, m, grid)):
            return self._residual_dense(dense_conv1(), identity, mask, grid)
        return self._residual_sparse(x, out1_for(mask), identity, index, grid)

    def _conv1_dense(self, x):
        return self.folded('conv1', self.conv1, self.norm1)(x)

    def _conv1_on_region(self, x, mask, grid):
        """conv1 (BatchNorm folded, before its ReLU) at the pixels of
        :meth:`conv1_region` only, zeros elsewhere (never read for this mask)."""
        conv1 = self.folded('conv1', self.conv1, self.norm1).cast(x.dtype)
        batch, _, in_h, in_w = x.shape
        pixels = sampled_pixels(self.conv1_region(mask, grid))
        conv = self.conv1
        taps = conv_tap_rows(pixels, (grid.height, grid.width), (in_h, in_w), conv.stride[0],
                             conv.dilation[0], conv.padding[0], zero_row=batch * in_h * in_w)
        out1 = x.new_zeros(batch, grid.height, grid.width, conv1.out_channels).permute(0, 3, 1, 2)
        pixel_rows(out1).index_copy_(0, pixels, conv3x3_rows(pixel_rows(x), taps,
                                                             conv1.matrix, conv1.bias))
        return out1

    def _residual_sparse(self, x, out1, identity, index, grid):
        patches = conv_on_windows(self.folded('conv2', self.conv2, self.norm2), out1,
                                  self.row_buffers, relu_input=True)
        return self.sparse_output(x, identity, index, grid, patches)

    def _residual_dense(self, out1, identity, mask, grid):
        residual = self.folded('conv2', self.conv2, self.norm2)(F.relu(out1))
        return self.masked_output(identity, residual, mask, grid)

    def _record(self, x, grid, mask):
        out_pixels = grid.height * grid.width
        c_in, c_out = self.conv1.in_channels, self.conv1.out_channels
        conv1_per_pixel = conv_macs(c_in, c_out, 3)
        conv2_per_pixel = conv_macs(c_out, c_out, 3)
        computed = (mask * patch_extents(grid, x.device)).sum(dim=(1, 2, 3))
        if self.sparse_conv1:
            conv1_pixels = self.conv1_region(mask, grid).sum(dim=(1, 2, 3))
        else:
            conv1_pixels = out_pixels
        downsample = self.downsample_flops(out_pixels)
        gate = self.gate_flops(x.shape[2] * x.shape[3], grid)
        dense = out_pixels * (conv1_per_pixel + conv2_per_pixel) + downsample
        self.store_record(grid, mask, computed, dense_flops=dense,
                          executed_flops=gate + conv1_pixels * conv1_per_pixel + downsample
                          + computed * conv2_per_pixel,
                          dense_route_flops=gate + dense)


def expand_granularity(granularity, stage_blocks: Sequence[int]):
    """Per-stage ints, or per-stage lists with one entry per block -> per-block ints."""
    if isinstance(granularity, (str, bytes)) or not isinstance(granularity, Sequence) \
            or len(granularity) != len(stage_blocks):
        raise ValueError(f'granularity must give one entry per stage ({len(stage_blocks)} '
                         f'stages), e.g. (8, 4, 7, 1); got {granularity!r}')
    per_block = []
    for stage, (value, blocks) in enumerate(zip(granularity, stage_blocks)):
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            if len(value) != blocks:
                raise ValueError(f'granularity[{stage}] lists {len(value)} values but stage '
                                 f'{stage + 1} has {blocks} blocks')
            per_block.append([check_granularity(v, f'granularity[{stage}][{k}]')
                              for k, v in enumerate(value)])
        else:
            per_block.append([check_granularity(value, f'granularity[{stage}]')] * blocks)
    return per_block


@MODELS.register_module()
class LASResNet(DynamicResNetMixin, ResNet):
    """Latency-aware spatial-wise dynamic ResNet (depth 18/34/50/101/152).

    Han et al., "Latency-aware Spatial-wise Dynamic Networks", NeurIPS 2022.

    Args:
        depth (int): Depth of the ResNet, one of {18, 34, 50, 101, 152}.
        granularity (tuple[int | Sequence[int]]): patch size S per stage, e.g.
            ``(8, 4, 7, 1)``; an entry may be a list with one S per block of that
            stage. Default: (4, 4, 2, 1).
        execution_mode (str): ``'auto'`` (masked in training, sparse in eval),
            ``'masked'`` or ``'sparse'`` (inference only). Default: 'auto'.
        temperature (float): initial Gumbel temperature (hooks change it during
            training). Default: 1.0.
        mask_init_bias (float): initial "compute" logit bias; > 0 starts every block
            dense. Default: 3.0.
        contract_dilation (bool): mmseg ``ResNetV1c`` semantics, the first block of a
            dilated stage uses half the dilation. Default: False.
        multi_grid (Sequence[int], optional): mmseg ``ResNetV1c``'s multi-grid
            dilations; not supported, must be None. Default: None.
        num_stages (int): number of ResNet stages, an int in [1, 4]. Default: 4.
        basic_conv1 (str): BasicBlock depths (18/34) only: ``'dense'`` runs conv1 on
            the whole map; ``'sparse'`` only where conv2 reads it for the active
            patches (the mask dilated by conv2's halo, as DynConv/LASNet count it), so
            that the executed FLOPs can fall below half of the block's; needed for
            FLOPs targets below ~0.55. It is not the default because it is slower on
            CPU: LAS-ResNet-18 at 800x1216, random masks, 2 threads, 206 against 162 ms
            at r = 0.3 and 275 against 201 ms at r = 0.5 (AMD EPYC family 26,
            2026-12-04). Default: 'dense'.
        **kwargs: other arguments: mmdet's ``ResNet`` (no ``dcn``, ``plugins`` or
            ``with_cp=True``; ``norm_cfg`` must be a BatchNorm).
    """

    mask_terms = MaskTerms('activation rate', 'computed patch', 'skipped patch (shortcut only)')
    arch_settings = {
        18: (LASBasicBlock, (2, 2, 2, 2)),
        34: (LASBasicBlock, (3, 4, 6, 3)),
        50: (LASBottleneck, (3, 4, 6, 3)),
        101: (LASBottleneck, (3, 4, 23, 3)),
        152: (LASBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int,
                 granularity: Sequence[Union[int, Sequence[int]]] = (4, 4, 2, 1),
                 execution_mode: str = 'auto', temperature: float = 1.0,
                 mask_init_bias: float = 3.0, contract_dilation: bool = False,
                 multi_grid: Optional[Sequence[int]] = None, num_stages: int = 4,
                 basic_conv1: str = 'dense', **kwargs):
        if depth not in self.arch_settings:
            raise ValueError(f'depth={depth!r} is not supported by LASResNet; choose one of '
                             f'{sorted(self.arch_settings)}')
        if basic_conv1 not in ('dense', 'sparse'):
            raise ValueError(f"basic_conv1 must be 'dense' or 'sparse', got {basic_conv1!r}")
        if basic_conv1 == 'sparse' and self.arch_settings[depth][0] is not LASBasicBlock:
            raise ValueError(f"basic_conv1='sparse' applies to BasicBlock depths (18, 34); "
                             f'depth {depth} has bottlenecks, whose conv1 (1x1) feeds the '
                             'masker and runs densely')
        self.basic_conv1 = basic_conv1
        if multi_grid is not None:
            raise ValueError('multi_grid is not supported by LASResNet')
        check_norm_cfg('LASResNet', kwargs.get('norm_cfg'))
        check_number(mask_init_bias, 'mask_init_bias')
        if not isinstance(num_stages, int) or not 1 <= num_stages <= 4:
            raise ValueError(f'num_stages must be an int in [1, 4], got {num_stages!r}')
        stage_blocks = self.arch_settings[depth][1][:num_stages]
        self._block_granularity = expand_granularity(granularity, stage_blocks)
        self.contract_dilation = contract_dilation
        self.mask_init_bias = mask_init_bias
        super().__init__(depth, num_stages=num_stages, **kwargs)
        self.granularity = tuple(tuple(g) for g in self._block_granularity)
        self.finish_dynamic_init(execution_mode, temperature)

    def make_res_layer(self, block, inplanes, planes, num_blocks, stride=1, dilation=1,
                       avg_down=False, conv_cfg=None, norm_cfg=dict(type='BN'), **kwargs):
        """mmdet's ResLayer with per-block granularity and mmseg's contract_dilation."""
        stage = len(self.res_layers)
        return plain_res_layer(
            block, inplanes, planes, num_blocks, stride, dilation, avg_down,
            self.contract_dilation, conv_cfg, norm_cfg, **kwargs,
            per_block=lambda k: dict(granularity=self._block_granularity[stage][k],
                                     block_name=f'layer{stage + 1}.{k}',
                                     mask_init_bias=self.mask_init_bias,
                                     **self._basic_block_args(block)))

    def _basic_block_args(self, block) -> dict:
        return dict(sparse_conv1=self.basic_conv1 == 'sparse') \
            if block is LASBasicBlock else {}

    def forward(self, x):
        layout = output_memory_format(x)
        x, stem_flops = self.stem_forward(x)
        outs, records = [], []
        for i, layer_name in enumerate(self.res_layers):
            for block in getattr(self, layer_name):
                x = block(x)
                records.append(block.record)
            if i in self.out_indices:
                outs.append(x.contiguous(memory_format=layout))  # as the dense ResNet
        self.store_forward_record(ForwardRecord({'stem': stem_flops}, records))
        return tuple(outs)
