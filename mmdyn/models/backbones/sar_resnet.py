"""SAR-ResNet: spatially adaptive feature refinement.

Han et al., "Spatially Adaptive Feature Refinement for Efficient Inference", IEEE TIP
2021. Stages 1-3 are SAR modules, stage 4 is a plain ResNet stage. A stage of n blocks:

    x0 = T(x)         the stage's first ResNet block (stride, dilation, channels), so
                      every output keeps the stride and width of mmdet's ResNet
    b  = B(x0)        base branch (Eq. 1): a strided block down to H/s x W/s at width
                      C/alpha, then the stage's other blocks at low resolution
    m_i = Gumbel(Conv1x1_G(Pool_KxK(ReLU(BN(Conv3x3(b_i))))))
                      region selection (Eq. 2): per block i, G masks on a K x K grid
                      of the full-resolution map, from the base features b_i
    r_i = relu(r_{i-1} + M_i * F_i(r_{i-1}))
                      refinement (Eq. 3-4): n-1 blocks at full resolution, width
                      C*beta, convolutions split into G channel groups; group g only
                      computes the cells its mask m_i[g] selects (M_i: the upsampled
                      masks, each on its group's channels; every conv input is masked)
    y = relu(a * up(P(b)) + (1 - a) * r),  a = sigmoid(W2 relu(W1 GAP(P(b))))
                      adaptive fusion (Eq. 5); P: 1x1 conv + BN to C channels

The K x K cells tile the refinement map from the top left, ceil(H/K) x ceil(W/K)
pixels each (the edge cells are cropped, and for maps smaller than K the grid is
coarser), so any input size runs.

``masked`` mode runs the grouped convolutions densely and multiplies by the masks
(training, the reference); ``sparse`` mode (SAR Fig. 3) gathers, per group, the
selected cells of all images with their halo, runs ordinary convolutions on the stack
and writes the results back.
"""
import math
import re
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn

from mmdyn.ops import (ForwardRecord, MaskTerms, PatchGrid, PatchMasker, Window,
                       active_patches, border_groups, border_pixels, conv_macs,
                       conv_on_windows, gather_windows, grouped_rows, patch_extents,
                       pixel_rows, upsample_patch_mask)
from mmdyn.ops.row_buffers import add_at_rows
from .dynamic import DynamicBlockMixin, check_number, fold_cache_of
from .resnet_parts import (DynamicResNetMixin, build_shortcut, first_block_dilation,
                           output_memory_format, plain_block_flops, plain_res_layer,
                           reject_unsupported, run_folded_block, run_folded_sequence,
                           run_static_layer)

SAR_STAGES = 3  # stages 1-3 are SAR modules (the paper's 4-stage ImageNet models)
_SETTING = re.compile(r'^G(\d+)s(\d+)a(\d+)(?:b(\d+(?:\.\d+)?))?$')


def parse_sar_setting(setting: str) -> dict:
    """The paper's shorthand, e.g. ``'G2s2a2b1'`` -> groups 2, base scale 2,
    alpha 2, beta 1 (``b`` may be left out: beta 1)."""
    match = _SETTING.match(setting) if isinstance(setting, str) else None
    if match is None:
        raise ValueError(f'sar_setting={setting!r} is not of the form G<groups>s<base '
                         'scale>a<alpha>[b<beta>], e.g. "G2s2a2b1" or "G2s4a1"')
    groups, scale, alpha, beta = match.groups()
    return dict(groups=int(groups), base_scale=int(scale), alpha=int(alpha),
                beta=float(beta) if beta else 1.0)


def _per_stage(name: str, value, stages: int, number=int, what='SAR stage'):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * stages
    if len(values) != stages:
        raise ValueError(f'{name}={value!r}: give one value or one per {what} ({stages})')
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0 or (number is int and int(v) != v):
            kind = 'positive integers' if number is int else 'positive numbers'
            raise ValueError(f'{name}={value!r}: values must be {kind}')
    return [number(v) for v in values]


def group_view(x, groups: int):
    """``[B, C, H, W]`` as ``[B, G, C/G, H, W]`` (a view, channels-last or not)."""
    batch, channels, height, width = x.shape
    return x.view(batch, groups, channels // groups, height, width)


def group_masked(x, pixel_mask):
    """Multiply channel group g of ``x`` ([B, C, H, W]) by ``pixel_mask[:, g]`` (None:
    every pixel selected, ``x`` itself)."""
    if pixel_mask is None:
        return x
    return (group_view(x, pixel_mask.shape[1]) * pixel_mask.unsqueeze(2)).view(x.shape)


def group_masked_(x, pixel_mask):
    """:func:`group_masked` in place on ``x`` (a fresh tensor nobody else reads)."""
    if pixel_mask is not None:
        group_view(x, pixel_mask.shape[1]).mul_(pixel_mask.unsqueeze(2))
    return x


def split_groups(folded, groups: int):
    """A grouped :class:`FoldedConv` as one ordinary FoldedConv per group."""
    step = folded.weight.shape[0] // groups
    return [type(folded)(folded.weight[g * step:(g + 1) * step].contiguous(),
                         folded.bias[g * step:(g + 1) * step].contiguous(),
                         folded.stride, folded.dilation, folded.padding)
            for g in range(groups)]


class RegionSelector(nn.Module):
    """SAR Eq. 2: 3x3 conv - BN - ReLU on the base features, adaptive average pool
    to the K x K grid, grouped 1x1 conv to 2G logits, straight-through Gumbel."""

    def __init__(self, in_channels: int, groups: int, init_on_bias: float,
                 conv_cfg=None, norm_cfg=dict(type='BN')):
        super().__init__()
        hidden = 4 * groups
        self.conv = build_conv_layer(conv_cfg, in_channels, hidden, 3, padding=1,
                                     groups=groups, bias=False)
        self.norm = build_norm_layer(norm_cfg, hidden)[1]
        self.masker = PatchMasker(hidden, init_on_bias, groups=groups)

    def forward(self, guide, grid_hw, tau: float, fold: bool = False):
        """``fold``: BatchNorm folded into the 3x3 conv (sparse inference)."""
        if fold:
            hidden = run_folded_sequence((self.conv, self.norm), guide,
                                         fold_cache_of(self), 'conv').relu_()
        else:
            hidden = F.relu(self.norm(self.conv(guide)))
        return self.masker(hidden, grid_hw, tau)

    def flops(self, guide_hw, grid: PatchGrid) -> int:
        conv = self.conv
        return (guide_hw[0] * guide_hw[1]
                * conv_macs(conv.in_channels, conv.out_channels, 3, conv.groups)
                + grid.rows * grid.cols * conv_macs(conv.out_channels, 2 * self.masker.groups,
                                                    1, self.masker.groups))


class _RefineBlock(DynamicBlockMixin, BaseModule):
    """A refinement block: grouped convs, G masks, masked or sparse execution."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 groups: int, dilation: int, mask_size: int, guide_channels: int,
                 mask_init_bias: float, block_name: str, conv_cfg=None,
                 norm_cfg=dict(type='BN'), init_cfg=None):
        BaseModule.__init__(self, init_cfg)
        self.init_dynamic(1, block_name)
        self.groups, self.dilation, self.mask_size = groups, dilation, mask_size
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg
        self.in_channels, self.out_channels = in_channels, out_channels
        self.mid_channels = mid_channels
        self.guide_channels, self.mask_init_bias = guide_channels, mask_init_bias
        self.relu = nn.ReLU(inplace=True)

    def add_conv(self, index: int, in_channels: int, out_channels: int, kernel: int):
        """``conv<index>`` (grouped) then ``norm<index>``, in this order (mmcv's
        fuse_conv_bn pairs a norm with the conv registered before it)."""
        pad = self.dilation if kernel == 3 else 0
        self.add_module(f'conv{index}', build_conv_layer(
            self.conv_cfg, in_channels, out_channels, kernel, padding=pad,
            dilation=self.dilation if kernel == 3 else 1, groups=self.groups, bias=False))
        self.add_module(f'norm{index}', build_norm_layer(self.norm_cfg, out_channels)[1])

    def new_parts(self) -> tuple:
        return (self.selector, )

    def finish_init(self):
        """After the convs: the shortcut projection (only when the width changes) and
        the block's region selector."""
        self.downsample = build_shortcut(self.in_channels, self.out_channels, 1, False,
                                         self.conv_cfg, self.norm_cfg)
        self.selector = RegionSelector(self.guide_channels, self.groups, self.mask_init_bias,
                                       self.conv_cfg, self.norm_cfg)

    def grid_for(self, height: int, width: int) -> PatchGrid:
        k = self.mask_size
        return PatchGrid(height, width, (math.ceil(height / k), math.ceil(width / k)))

    def window(self, grid: PatchGrid) -> Window:
        """Where a cell's input lives on the previous map: the cell plus the 3x3
        conv's halo (its dilation) on every side."""
        step, halo = (grid.patch_h, grid.patch_w), self.dilation
        return Window(step, (step[0] + 2 * halo, step[1] + 2 * halo), halo)

    def forward(self, x, guide):
        grid = self.grid_for(x.shape[2], x.shape[3])
        self.ran_densely = False  # the last forward took the dense route
        sparse = self.use_sparse_path()
        mask = self.selector(guide, grid.shape, self.temperature, fold=sparse)
        forced = self.forced_mask(x.shape[0], grid, x, self.groups)
        if forced is not None:  # benchmarks and tests; the selector still ran
            mask = forced
        out = self.forward_sparse(x, mask, grid, self.route_shape(x, guide)) if sparse \
            else self.forward_masked(x, mask, grid)
        self._record(x, guide, mask, grid)
        return out

    def forward_masked(self, x, mask, grid):
        """The reference (training): dense grouped convs multiplied by the masks."""
        identity = x if self.downsample is None else self.downsample(x)
        residual = self.residual_masked(x, upsample_patch_mask(mask, grid))
        return self.relu(identity + residual)

    # -- sparse execution (SAR Fig. 3) --------------------------------------------

    def group_convs(self, index: int):
        """Per-group BN-folded weights of ``conv<index>`` (cached)."""
        conv, norm = getattr(self, f'conv{index}'), getattr(self, f'norm{index}')
        folded = self.folded(f'conv{index}', conv, norm)
        return self.cached(f'conv{index}/groups', (folded.weight,),
                           lambda: split_groups(folded, self.groups))

    def sparse_identity(self, x):
        """(output map, pre-activation identity rows). The output starts as
        relu(identity); selected cells are overwritten with relu(identity + F)."""
        if self.downsample is None:
            # x is a ReLU output, so relu(x) == x: start from x itself (updated in place
            # when the backbone owns it and nothing records gradients).
            reuse = self.may_overwrite(x, x)
            return (x if reuse else x.clone()), pixel_rows(x)
        *_, conv, norm = self.downsample
        identity = self.folded('downsample', conv, norm)(x)
        return F.relu(identity), pixel_rows(identity)

    def route_shape(self, x, guide) -> Optional[tuple]:
        """The block as the latency predictor's SAR model takes it (a refinement
        bottleneck of dilation 1, batch 1), or None: its crossover is then measured."""
        if not isinstance(self, RefineBottleneck) or x.shape[0] != 1 or self.dilation != 1:
            return None
        return ('sar', self.in_channels, self.mid_channels, self.out_channels, x.shape[2],
                x.shape[3], self.groups, self.mask_size, tuple(guide.shape[1:]),
                self.downsample is not None)

    def forward_sparse(self, x, mask, grid, shape: Optional[tuple] = None):
        """Above the block's crossover rate the refinement runs densely (its grouped
        convs on the whole map, masked: :meth:`refine_dense`), else per group on the
        selected cells (:meth:`refine_sparse`); the same output. ``shape``: see
        :meth:`route_shape`."""
        x = x.contiguous(memory_format=torch.channels_last)
        scratch = []

        def run_sparse(m):
            # as the forward runs it (in place where the backbone owns x), on a copy of
            # x made once, before the timings: a copy per run is no cost of the route
            if not scratch:
                scratch.append(x.clone())
            return self.refine_sparse(scratch[0], m, grid)

        if self.takes_dense_route(x, mask, grid, run_sparse,
                                  lambda m: self.refine_dense(x, m, grid),
                                  groups=self.groups, shape=shape, full_mask_dense=True):
            return self.refine_dense(x, mask, grid)
        return self.refine_sparse(x, mask, grid)

    def refine_sparse(self, x, mask, grid):
        out, identity_rows = self.sparse_identity(x)
        out_rows = pixel_rows(out)
        channels = out.shape[1] // self.groups
        for g in range(self.groups):
            index = active_patches(mask[:, g])
            if index.numel() == 0:
                continue
            # border cells cropped to the map: the convs compute what the records count
            groups = border_groups(index, grid)
            cols = slice(g * channels, (g + 1) * channels)
            self.refine_group(x, grid, g, groups, border_pixels(groups, grid), mask,
                              out_rows[:, cols], identity_rows[:, cols])
        return out

    def refine_dense(self, x, mask, grid):
        """relu(identity + M * F(x)) with F's grouped convs BatchNorm-folded and run on
        the whole map (the masked reference's arithmetic; the masks are 0 / 1 at
        inference): the inner masks multiply the fresh conv outputs in place and the
        last one blends in one pass, identity + M * F(x) into F(x)'s buffer; ``x`` is
        not modified."""
        identity = x if self.downsample is None else \
            self.folded('downsample', *self.downsample[-2:])(x)
        full = bool((mask >= 1).all())  # every cell selected: nothing to mask
        pixel_mask = None if full else upsample_patch_mask(mask, grid)
        residual = self.residual_dense(x, pixel_mask)
        if pixel_mask is None:
            return residual.add_(identity).relu_()
        grouped = group_view(residual, self.groups)
        if torch.is_grad_enabled():  # an eval forward with gradients on: no out= op
            grouped.mul_(pixel_mask.unsqueeze(2))
            return residual.add_(identity).relu_()
        torch.addcmul(group_view(identity, self.groups), grouped, pixel_mask.unsqueeze(2),
                      out=grouped)
        return residual.relu_()

    def conv_norm(self, index: int, fold: bool):
        """``norm<index>(conv<index>(.))``, or its BatchNorm-folded form."""
        conv, norm = getattr(self, f'conv{index}'), getattr(self, f'norm{index}')
        if fold:
            return self.folded(f'conv{index}', conv, norm)
        return lambda x: norm(conv(x))

    def halo_canvas(self, values, pixels, like, channels: int):
        """A zero map (channels-last) holding ``values`` at the selected ``pixels``: the
        masked input of the next 3x3 conv, read with its halo by gather_windows."""
        batch, _, height, width = like.shape
        canvas = values.new_zeros(batch * height * width, channels)
        canvas.index_copy_(0, pixels, values)
        return canvas.view(batch, height, width, channels).permute(0, 3, 1, 2)

    def _record(self, x, guide, mask, grid):
        groups = self.groups
        area = (mask * patch_extents(grid, x.device)).sum(dim=(2, 3))  # [B, G] pixels
        per_pixel = self.group_pixel_flops()
        always = self.selector.flops(guide.shape[2:], grid)
        if self.downsample is not None:
            always += grid.height * grid.width * conv_macs(self.in_channels,
                                                           self.out_channels, 1)
        dense = always + grid.height * grid.width * groups * per_pixel
        self.store_record(grid, mask, area.mean(dim=1), dense_flops=dense,
                          executed_flops=always + area.sum(dim=1) * per_pixel,
                          dense_route_flops=dense)


class RefineBottleneck(_RefineBlock):
    """1x1 - 3x3 - 1x1 grouped bottleneck at full resolution (SAR Eq. 3-4)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_conv(1, self.in_channels, self.mid_channels, 1)
        self.add_conv(2, self.mid_channels, self.mid_channels, 3)
        self.add_conv(3, self.mid_channels, self.out_channels, 1)
        self.finish_init()

    def residual_dense(self, x, pixel_mask):
        """F(x) for :meth:`refine_dense`, its last mask left to the caller: conv3 is a
        (grouped) 1x1 conv and the masks are 0 / 1, so that mask also covers conv3's
        input:  M (W3 (M h) + b) = M (W3 h + b)."""
        conv1, conv2, conv3 = (self.conv_norm(i, fold=True) for i in (1, 2, 3))
        out = group_masked_(conv1(x, relu=True), pixel_mask)
        return conv3(conv2(out, relu=True))

    def residual_masked(self, x, pixel_mask):
        conv1, conv2, conv3 = (self.conv_norm(i, fold=False) for i in (1, 2, 3))
        out = group_masked(self.relu(conv1(x)), pixel_mask)
        out = group_masked(self.relu(conv2(out)), pixel_mask)
        return group_masked(conv3(out), pixel_mask)

    def refine_group(self, x, grid, g, groups, pixels, mask, dest, identity):
        """``dest = relu(identity + F_g(x))`` on group g's selected pixels (``groups``:
        its selected cells by :func:`border_groups`, ``pixels``: their pixels in that
        order; ``dest``, ``identity``: the group's channels of the output's and the
        identity's rows): conv3's product added onto the identity rows in one scatter
        (:meth:`FoldedConv.scatter_accumulate_`)."""
        conv1, conv2, conv3 = (self.group_convs(i)[g] for i in (1, 2, 3))
        width = x.shape[1] // self.groups
        # a row gather, faster than index_select; the identity is x itself without a
        # downsample
        inputs = F.embedding(pixels, pixel_rows(x)[:, g * width:(g + 1) * width])
        hidden = conv1.rows(inputs).relu_()
        canvas = self.halo_canvas(hidden, pixels, x, hidden.shape[1])
        hidden = grouped_rows(groups, grid, self.window(grid),
                              conv_on_windows(conv2, canvas, self.row_buffers, relu=True),
                              pixels)
        conv3.scatter_accumulate_(dest, identity, pixels, hidden, relu=True,
                                  buffers=self.row_buffers)

    def group_pixel_flops(self) -> int:
        g = self.groups
        cin, mid, cout = self.in_channels // g, self.mid_channels // g, self.out_channels // g
        return conv_macs(cin, mid, 1) + conv_macs(mid, mid, 3) + conv_macs(mid, cout, 1)


class RefineBasicBlock(_RefineBlock):
    """3x3 - 3x3 grouped basic block at full resolution (SAR Eq. 3-4)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_conv(1, self.in_channels, self.mid_channels, 3)
        self.add_conv(2, self.mid_channels, self.out_channels, 3)
        self.finish_init()

    def residual_dense(self, x, pixel_mask):
        """F(x) for :meth:`refine_dense`, its last mask left to the caller."""
        conv1, conv2 = (self.conv_norm(i, fold=True) for i in (1, 2))
        hidden = group_masked_(conv1(group_masked(x, pixel_mask), relu=True), pixel_mask)
        return conv2(hidden)

    def residual_masked(self, x, pixel_mask):
        conv1, conv2 = (self.conv_norm(i, fold=False) for i in (1, 2))
        out = group_masked(self.relu(conv1(group_masked(x, pixel_mask))), pixel_mask)
        return group_masked(conv2(out), pixel_mask)

    def refine_group(self, x, grid, g, groups, pixels, mask, dest, identity):
        """``dest = relu(identity + F_g(x))`` on group g's selected pixels (arguments as
        :meth:`RefineBottleneck.refine_group`)."""
        conv1, conv2 = (self.group_convs(i)[g] for i in (1, 2))
        width = x.shape[1] // self.groups
        # conv1 reads x with its halo, zero on the cells group g did not select.
        selected = upsample_patch_mask(mask[:, g:g + 1], grid).contiguous(
            memory_format=torch.channels_last)
        x_g, window = x[:, g * width:(g + 1) * width], self.window(grid)

        def conv1_cells(cells, window):
            inputs = gather_windows(x_g, cells, window, self.row_buffers)
            return conv1(inputs * gather_windows(selected, cells, window), valid=True,
                         relu=True)
        hidden = grouped_rows(groups, grid, window, conv1_cells)
        canvas = self.halo_canvas(hidden, pixels, x, hidden.shape[1])
        hidden = grouped_rows(groups, grid, window,
                              conv_on_windows(conv2, canvas, self.row_buffers), pixels)
        add_at_rows(dest, identity, pixels, hidden, relu=True, buffers=self.row_buffers)

    def group_pixel_flops(self) -> int:
        g = self.groups
        cin, mid, cout = self.in_channels // g, self.mid_channels // g, self.out_channels // g
        return conv_macs(cin, mid, 3) + conv_macs(mid, cout, 3)


class AdaptiveFusion(nn.Module):
    """SAR Eq. 5: y = relu(a * up(base) + (1 - a) * refine), with the channel weights
    a = sigmoid(W2 relu(W1 GAP(base))) from the (projected) base features."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, base, refine):
        a = torch.sigmoid(self.fc2(F.relu(self.fc1(base.mean(dim=(2, 3))))))[:, :, None, None]
        height, width = refine.shape[2:]
        if torch.is_grad_enabled():
            up = F.interpolate(base, size=(height, width), mode='nearest')
            return F.relu(a * up + (1 - a) * refine)
        # Inference: blend in place on the refinement map in one pass, a*base scaled at
        # low resolution and broadcast when the upsampling factor is whole.
        low = a * base
        (batch, channels), (h, w) = refine.shape[:2], low.shape[2:]
        if height % h == 0 and width % w == 0:
            shape = (batch, channels, h, height // h, w, width // w)
            view = refine.view(shape)
            torch.addcmul(low.view(batch, channels, h, 1, w, 1), view,
                          (1 - a).view(batch, channels, 1, 1, 1, 1), out=view)
        else:
            refine.mul_(1 - a).add_(F.interpolate(low, size=(height, width), mode='nearest'))
        return refine.relu_()

    def flops(self) -> int:
        return 2 * self.fc1.in_features * self.fc1.out_features


class SARStage(nn.Module):
    """One SAR module: transition block, base branch, refinement branch, fusion."""

    def __init__(self, transition, base_pools: int, base_blocks, base_projection,
                 refine_blocks, refine_projection, fusion: AdaptiveFusion):
        super().__init__()
        self.transition = transition
        self.base_pool = nn.Sequential(*[nn.AvgPool2d(3, 2, 1) for _ in range(base_pools)])
        self.base = nn.Sequential(*base_blocks)
        self.base_projection = base_projection
        self.refine = nn.ModuleList(refine_blocks)
        self.refine_projection = refine_projection
        self.fusion = fusion
        self._static_flops = {}

    def forward(self, x, fold: bool = False):
        """``fold``: the static parts (transition, base branch, projections) run with
        their BatchNorms folded (sparse inference; the refine blocks fold their own)."""
        run_block = run_folded_block if fold else (lambda block, inputs: block(inputs))
        x = run_block(self.transition, x)
        base = self.base_pool(x)
        guides = []
        for block in self.base:  # the whole base branch first: refine blocks may
            base = run_block(block, base)  # then update x in place (inference)
            guides.append(base)
        refine = x
        for block, guide in zip(self.refine, guides):
            refine = block(refine, guide)
        refine = self.project(self.refine_projection, refine, fold, 'refine_projection')
        base = self.project(self.base_projection, base, fold, 'base_projection')
        return self.fusion(base, refine)

    def project(self, projection, x, fold: bool, name: str):
        """A branch's 1x1 conv + norm to the stage width (none when it fits)."""
        if projection is None:
            return x
        if fold:
            return run_folded_sequence(projection, x, fold_cache_of(self), name)
        return projection(x)

    def static_flops(self, in_size) -> float:
        """FLOPs that do not depend on the masks (transition, base branch, projections,
        fusion) for an input of ``in_size``; cached per size."""
        if in_size not in self._static_flops:
            flops, size = plain_block_flops(self.transition, in_size)
            full = size
            for _ in self.base_pool:
                size = ((size[0] - 1) // 2 + 1, (size[1] - 1) // 2 + 1)
            for block in self.base:
                block_flops, size = plain_block_flops(block, size)
                flops += block_flops
            for projection, at in ((self.base_projection, size),
                                   (self.refine_projection, full)):
                if projection is not None:
                    conv = projection[0]
                    flops += at[0] * at[1] * conv_macs(conv.in_channels, conv.out_channels, 1)
            self._static_flops[in_size] = flops + self.fusion.flops()
        return self._static_flops[in_size]


@MODELS.register_module()
class SARResNet(DynamicResNetMixin, ResNet):
    """SAR-ResNet (depth 18/34/50/101) for mmdet/mmseg; returns the feature maps of
    mmdet's ResNet (same strides and channels for every ``out_indices``).

    Han et al., "Spatially Adaptive Feature Refinement for Efficient Inference", IEEE
    TIP 2021.

    Args:
        depth (int): Depth of the ResNet, one of {18, 34, 50, 101}.
        sar_setting (str, optional): the paper's shorthand for all SAR stages, e.g.
            ``'G2s2a2b1'`` (G groups, base scale s, alpha, beta). Default: None.
        groups (int | Sequence[int], optional): G, the number of region masks and
            channel groups of the refinement branch, per SAR stage (one value or
            three); alternative to ``sar_setting``. Default: None (2).
        base_scale (int | Sequence[int], optional): s, the base branch's downsampling
            factor (a power of two) per SAR stage (one value or three); alternative to
            ``sar_setting``. Default: None (2).
        alpha (int | Sequence[int], optional): the base branch's width reduction
            (width C/alpha) per SAR stage (one value or three); alternative to
            ``sar_setting``. Default: None (2).
        beta (float | Sequence[float], optional): the refinement branch's width factor
            (width C*beta) per SAR stage (one value or three); alternative to
            ``sar_setting``. Default: None (1.0).
        mask_size (int | Sequence[int]): K per SAR stage (one value or three), the
            region-selection grid; the default is that of the reference ImageNet
            models. Default: (7, 7, 2).
        min_input_size (int | Sequence[int]): the smallest input (int or (h, w)) the
            config will see; K must fit the smallest refinement map it produces.
            Default: 224.
        fusion_reduction (int): channel reduction of the fusion weights' hidden layer.
            Default: 16.
        execution_mode (str): ``'auto'`` (masked in training, sparse in eval),
            ``'masked'`` or ``'sparse'`` (inference only), as in ``LASResNet``.
            Default: 'auto'.
        temperature (float): initial Gumbel temperature (hooks change it during
            training), as in ``LASResNet``. Default: 1.0.
        mask_init_bias (float): initial "refine" logit bias of the region selectors;
            > 0 starts every region refined, as in ``LASResNet``. Default: 3.0.
        contract_dilation (bool): mmseg ``ResNetV1c`` semantics for dilated stages.
            Default: False.
        num_stages (int): number of ResNet stages, an int in [1, 4]. Default: 4.
        strides (Sequence[int]): strides of the first block of each stage, as in
            mmdet's ``ResNet``. Default: (1, 2, 2, 2).
        multi_grid (Sequence[int], optional): mmseg ``ResNetV1c``'s multi-grid
            dilations; not supported, must be None. Default: None.
        **kwargs: other arguments: mmdet's ``ResNet`` (no ``dcn``, ``plugins`` or
            ``with_cp=True``; ``norm_cfg`` must be a BatchNorm).
    """

    mask_terms = MaskTerms('refine rate', 'refined at full resolution', 'base branch only (coarse)')
    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
    }
    #: SAR's stages differ from ResNet's (base branch, refinement, fusion): its static
    #: twin is the plain ResNet of the same depth and layout, with its own weights.
    twin_extra_keys = None

    def __init__(self, depth: int, sar_setting: Optional[str] = None,
                 groups: Optional[Union[int, Sequence[int]]] = None,
                 base_scale: Optional[Union[int, Sequence[int]]] = None,
                 alpha: Optional[Union[int, Sequence[int]]] = None,
                 beta: Optional[Union[float, Sequence[float]]] = None,
                 mask_size: Union[int, Sequence[int]] = (7, 7, 2),
                 min_input_size: Union[int, Sequence[int]] = 224,
                 fusion_reduction: int = 16, execution_mode: str = 'auto',
                 temperature: float = 1.0, mask_init_bias: float = 3.0,
                 contract_dilation: bool = False, num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2),
                 multi_grid: Optional[Sequence[int]] = None, **kwargs):
        if depth not in self.arch_settings:
            raise ValueError(f'depth={depth!r} is not supported by SARResNet; choose one of '
                             f'{sorted(self.arch_settings)}')
        reject_unsupported('SARResNet', multi_grid, **kwargs)
        if not isinstance(num_stages, int) or not 1 <= num_stages <= 4:
            raise ValueError(f'num_stages must be an int in [1, 4], got {num_stages!r}')
        explicit = dict(groups=groups, base_scale=base_scale, alpha=alpha, beta=beta)
        if sar_setting is not None:
            if any(v is not None for v in explicit.values()):
                raise ValueError('give either sar_setting or groups/base_scale/alpha/beta')
            explicit = parse_sar_setting(sar_setting)
        defaults = dict(groups=2, base_scale=2, alpha=2, beta=1.0)
        settings = {k: explicit[k] if explicit[k] is not None else defaults[k]
                    for k in defaults}
        self.sar_groups = _per_stage('groups', settings['groups'], SAR_STAGES)
        self.base_scale = _per_stage('base_scale', settings['base_scale'], SAR_STAGES)
        self.alpha = _per_stage('alpha', settings['alpha'], SAR_STAGES)
        self.beta = _per_stage('beta', settings['beta'], SAR_STAGES, number=float)
        self.mask_size = _per_stage('mask_size', mask_size, SAR_STAGES)
        for s in self.base_scale:
            if s & (s - 1):
                raise ValueError(f'base_scale={s}: the base branch downsamples by '
                                 'powers of two (1, 2, 4, 8, ...)')
        self.min_input_size = _per_stage('min_input_size', min_input_size, 2,
                                         what='side (h, w)')
        self.fusion_reduction = check_number(fusion_reduction, 'fusion_reduction', low=1,
                                             integer=True)
        check_number(mask_init_bias, 'mask_init_bias')
        self.contract_dilation = contract_dilation
        self.mask_init_bias = mask_init_bias
        self._check_mask_sizes(strides, num_stages)
        super().__init__(depth, num_stages=num_stages, strides=strides, **kwargs)
        self.finish_dynamic_init(execution_mode, temperature)

    def _check_mask_sizes(self, strides, num_stages):
        stride = 4  # the stem
        for stage in range(min(SAR_STAGES, num_stages)):
            stride *= strides[stage]
            smallest = [math.ceil(n / stride) for n in self.min_input_size]
            k = self.mask_size[stage]
            if k > min(smallest):
                raise ValueError(
                    f'mask_size K={k} at stage {stage + 1} is larger than its '
                    f'{smallest[0]}x{smallest[1]} feature map for the minimum input '
                    f'{self.min_input_size[0]}x{self.min_input_size[1]} '
                    '(min_input_size); lower K or raise min_input_size')

    def make_res_layer(self, block, inplanes, planes, num_blocks, stride=1, dilation=1,
                       avg_down=False, conv_cfg=None, norm_cfg=dict(type='BN'),
                       init_cfg=None, **kwargs):
        stage = len(self.res_layers)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, init_cfg=init_cfg, **kwargs)
        if stage >= SAR_STAGES:
            return plain_res_layer(block, inplanes, planes, num_blocks, stride, dilation,
                                   avg_down, self.contract_dilation, **common)
        out_channels = planes * block.expansion
        transition = block(inplanes=inplanes, planes=planes, stride=stride,
                           dilation=first_block_dilation(dilation, self.contract_dilation),
                           downsample=build_shortcut(
                               inplanes, out_channels, stride, avg_down, conv_cfg, norm_cfg),
                           **common)
        if num_blocks < 2:
            raise ValueError(f'stage {stage + 1} has {num_blocks} block; a SAR stage needs '
                             'at least 2 (a transition block and one refinement block)')
        return self._make_sar_stage(stage, block, transition, planes, num_blocks,
                                    dilation, avg_down, common)

    def _make_sar_stage(self, stage, block, transition, planes, num_blocks, dilation,
                        avg_down, common):
        groups, scale = self.sar_groups[stage], self.base_scale[stage]
        alpha, beta = self.alpha[stage], self.beta[stage]
        out_channels = planes * block.expansion
        where = f'stage {stage + 1}'
        if planes % alpha:
            raise ValueError(f'alpha={alpha} does not divide the {planes} channels of '
                             f'{where} (base branch width C/alpha)')
        base_planes = planes // alpha
        base_channels = base_planes * block.expansion
        refine_mid, refine_out = planes * beta, out_channels * beta
        if refine_mid != int(refine_mid) or refine_out != int(refine_out):
            raise ValueError(f'beta={beta} gives a fractional refinement width at {where}')
        refine_mid, refine_out = int(refine_mid), int(refine_out)
        for what, channels in (('refinement branch', refine_mid),
                               ('refinement branch', refine_out), ('base branch', base_channels)):
            if channels % groups:
                raise ValueError(f'G={groups} does not divide the {channels} channels of the '
                                 f'{what} of {where}')
        # Base branch (Eq. 1): avg-pools for scales beyond 2, then a stride-2 block.
        base_stride = 1 if scale == 1 else 2
        base_blocks = [block(inplanes=out_channels, planes=base_planes, stride=base_stride,
                             downsample=build_shortcut(out_channels, base_channels,
                                                       base_stride, avg_down,
                                                       common['conv_cfg'], common['norm_cfg']),
                             **common)]
        base_blocks += [block(inplanes=base_channels, planes=base_planes, **common)
                        for _ in range(num_blocks - 2)]
        refine_cls = RefineBottleneck if block is Bottleneck else RefineBasicBlock
        refine_blocks = [refine_cls(
            in_channels=out_channels if k == 0 else refine_out, mid_channels=refine_mid,
            out_channels=refine_out, groups=groups, dilation=dilation,
            mask_size=self.mask_size[stage], guide_channels=base_channels,
            mask_init_bias=self.mask_init_bias, block_name=f'layer{stage + 1}.refine.{k}',
            conv_cfg=common['conv_cfg'], norm_cfg=common['norm_cfg'],
            init_cfg=common['init_cfg']) for k in range(num_blocks - 1)]
        return SARStage(
            transition, int(math.log2(scale)) - 1 if scale > 1 else 0, base_blocks,
            self._projection(base_channels, out_channels, common),
            refine_blocks, self._projection(refine_out, out_channels, common),
            AdaptiveFusion(out_channels, self.fusion_reduction))

    @staticmethod
    def _projection(in_channels: int, out_channels: int, common):
        """1x1 conv + norm aligning a branch to the stage width (None if it fits)."""
        return build_shortcut(in_channels, out_channels, 1, False, common['conv_cfg'],
                              common['norm_cfg'])

    def forward(self, x):
        layout = output_memory_format(x)
        x, stem_flops = self.stem_forward(x)
        fold = self.folds_static_parts()
        static = {'stem': stem_flops}
        outs, records = [], []
        for i, layer_name in enumerate(self.res_layers):
            layer = getattr(self, layer_name)
            size = tuple(x.shape[2:])
            if isinstance(layer, SARStage):
                static[layer_name] = layer.static_flops(size)
                x = layer(x, fold=fold)
                records += [block.record for block in layer.refine]
            else:
                flops = 0
                for block in layer:
                    block_flops, size = plain_block_flops(block, size)
                    flops += block_flops
                static[layer_name] = flops
                x = run_static_layer(layer, x, fold)
            if i in self.out_indices:
                outs.append(x.contiguous(memory_format=layout))  # as the dense ResNet
        self.store_forward_record(ForwardRecord(static, records))
        return tuple(outs)
