"""SFSI-ResNet: stochastic feature sampling and interpolation.

Xie et al., "Spatially Adaptive Inference with Stochastic Feature Sampling and
Interpolation", ECCV 2020 (and its appendix). In every bottleneck, two mask heads
(3x3 conv from the block input to one logit, stride matched to the conv they serve)
decide which output pixels of conv1 and of conv2 are computed:

    p_i = sigmoid(l_i),  M_i = [sigmoid((l_i + g1 - g2) / tau) >= 0.5]      (Sec. 3.2)

(Gumbel sampling, kept stochastic at inference with a low tau; or the deterministic
Gumbel-softmax / ReLU-gating variants of Table 1), with the grid prior (Sec. 3.3)

    M_i[..., ::k, ::k] = 1,

and the unsampled pixels are filled after each conv (after BN + ReLU) by normalised
Gaussian interpolation with a learnable width per layer (Eq. 3)

    F' = M * F + (1 - M) * (G * (M * F)) / (G * M + eps).

The block is  y = relu(x_identity + BN3(conv3(F2'))).  ``masked`` execution computes
every conv densely and multiplies (training, the reference). ``sparse`` execution
computes conv1 (one pixel-row gather + GEMM) and conv2 (tap-row gather + GEMM, or
bilinear deformable taps with DCN) only at the sampled pixels, interpolates conv1's
result with a separable blur and, with ``sparse_conv3='dense'`` (the default, the
reference order), interpolates conv2's output and runs conv3 over every pixel as one
product accumulating onto the residual (bias and ReLU fused). ``sparse_conv3='sampled'``
moves conv3 before the second interpolation instead: conv3 acts on channels and Eq. 3
on space, both linearly, so

    W3 F2' = M2 * (W3 F2) + (1 - M2) * (G * (M2 * W3 F2)) / (G * M2 + eps)

exactly, and conv3 too runs on the sampled pixels only (its bias rides on the
residual); fewer FLOPs, but the interpolation then runs on the 4x wider map, which
measured slower on CPU (docs/benchmarks.md).

Sparse loss of a block (the reference's): 0.25 * mean(p_1) + 0.75 * mean(p_2).
Module tree and parameter names are mmdet's ``ResNet`` / ``ResNeXt`` (plus
``conv{1,2}_mask`` and ``conv{1,2}_sigma`` per block), so dense checkpoints load.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
from mmdet.models.backbones.resnet import ResNet
from mmdet.models.backbones.resnext import Bottleneck as ResNeXtBottleneck
from mmengine.registry import MODELS
from torch import Tensor, nn
from torch.profiler import record_function

from mmdyn.ops import (BlockRecord, FoldedConv, ForwardRecord, MaskTerms, PatchGrid,
                       conv_macs, pixel_rows)
from mmdyn.ops.gemm import gather_gemm, gemm, gemm_acc
from mmdyn.ops.pixel_sampling import (PixelMaskHead, SeededGenerators, apply_grid_prior,
                                      bilinear_tap_rows, blur_macs, check_grid_prior,
                                      check_kernel_size, check_sampling_variant, conv_matrix,
                                      conv_rows, conv_tap_rows, gaussian_kernel_1d,
                                      grouped_matmul, head_groups, interpolate_dense,
                                      interpolate_rows, map_with_zero_row,
                                      mask_head_logits, pixel_rows_view, sample_mask,
                                      sampled_pixels)

from .dynamic import DynamicBlockMixin, check_number
from .resnet_parts import (DynamicResNetMixin, check_norm_cfg, check_resnet_sizes,
                           check_resnext_width, output_memory_format, plain_res_layer,
                           run_folded_block)


SPARSE_CONV3 = ('sampled', 'dense')


def check_sparse_conv3(value: str) -> str:
    if value not in SPARSE_CONV3:
        raise ValueError(f'sparse_conv3={value!r} is not one of {SPARSE_CONV3}')
    return value


def check_sampling_seed(seed):
    """None (torch's RNG) or an int."""
    if seed is not None:
        check_number(seed, 'sampling_seed', integer=True)
    return seed


@dataclass
class SFSIBlockRecord(BlockRecord):
    """:class:`BlockRecord` of an SFSI bottleneck. ``mask`` / ``activation_rate`` are
    conv2's (the block's output grid); ``conv1_mask`` / ``conv1_rate`` conv1's;
    ``soft_masks`` the two soft masks the sparse loss averages."""
    conv1_mask: Optional[Tensor] = None
    conv1_rate: Optional[Tensor] = None
    soft_masks: tuple = ()


@dataclass
class SampledMask:
    hard: Tensor    # {0, 1} support, straight-through in training
    value: Tensor   # what the computed features are multiplied by
    soft: Tensor    # what the sparse loss averages


class SFSIBottleneck(DynamicBlockMixin, ResNeXtBottleneck):
    """mmdet (ResNeXt) Bottleneck with SFSI sampling of conv1 and conv2."""

    def __init__(self, *args, block_name: str = '', sampling: str = 'stochastic',
                 grid_prior_interval: Optional[int] = 11, interpolation_kernel: int = 7,
                 init_sigma: float = 3.0, mask_init_bias: float = 3.0,
                 test_temperature: float = 0.01, sparse_conv3: str = 'dense', **kwargs):
        super().__init__(*args, **kwargs)
        if self.style != 'pytorch':
            raise ValueError(f"{block_name}: SFSIResNet needs style='pytorch' (stride on "
                             f"the 3x3 conv), got style={self.style!r}")
        if self.with_plugins or self.with_cp:
            raise ValueError(f'{block_name}: SFSIResNet does not support plugins or '
                             'with_cp=True')
        self.init_dynamic(1, block_name)
        self.sampling = check_sampling_variant(sampling)
        self.grid_prior_interval = check_grid_prior(grid_prior_interval)
        self.kernel_size = check_kernel_size(interpolation_kernel)
        check_number(test_temperature, 'test_temperature', low=0, low_inclusive=False)
        self.test_temperature = float(test_temperature)
        self.sparse_conv3 = check_sparse_conv3(sparse_conv3)
        self.conv1_mask = PixelMaskHead(self.inplanes, 1, mask_init_bias)
        self.conv2_mask = PixelMaskHead(self.inplanes, self.conv2_stride, mask_init_bias)
        self.conv1_sigma = nn.Parameter(torch.tensor(float(init_sigma)))
        self.conv2_sigma = nn.Parameter(torch.tensor(float(init_sigma)))
        self.generator = None  # shared by the backbone: seeded stochastic inference
        self.deformable = hasattr(self.conv2, 'conv_offset')

    # -- sampling --------------------------------------------------------------------

    def new_parts(self) -> tuple:
        return (self.conv1_mask, self.conv2_mask, self.conv1_sigma, self.conv2_sigma)

    def sample(self, x: Tensor, out_hw):
        """The two sampling masks, conv1's on the input grid, conv2's on the output.
        In eval mode the heads' logits come from :func:`mask_head_logits` (the heads of
        one stride in one pass) in both executions, so masked and sparse sample the same
        masks for a seed.
        Forced rates (benchmarks and tests) replace the sampled masks, after the mask
        heads and the sampling have run as they would: their cost stays in a timing."""
        tau = self.temperature if self.training else self.test_temperature
        heads = (self.conv1_mask, self.conv2_mask)
        if not self.training:
            sources = [p for h in heads for p in (h.weight, h.bias)]
            groups = self.cached('mask-head-groups', sources, lambda: head_groups(heads))
            all_logits = mask_head_logits(x, heads, groups)
        else:
            all_logits = [head(x) for head in heads]
        masks = []
        for logits in all_logits:
            hard, value, soft = sample_mask(logits, self.sampling, tau, self.training,
                                            self.generator)
            prior_hard = apply_grid_prior(hard, self.grid_prior_interval)
            prior_value = prior_hard if value is hard else \
                apply_grid_prior(value, self.grid_prior_interval)
            masks.append(SampledMask(prior_hard, prior_value, soft))
        if self.forced_rate is None:
            return masks
        forced = []
        for k, grid in enumerate((PatchGrid(x.shape[2], x.shape[3], 1), PatchGrid(*out_hw, 1))):
            mask = self.forced_mask(x.shape[0], grid, x, seed=self.forced_seed * 2 + k)
            mask = apply_grid_prior(mask, self.grid_prior_interval)
            forced.append(SampledMask(mask, mask, mask))
        return forced

    # -- execution -------------------------------------------------------------------

    def forward(self, x):
        stride = self.conv2_stride
        out_hw = ((x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1)
        sparse = self.use_sparse_path()
        if sparse:
            x = x.contiguous(memory_format=torch.channels_last)
        with record_function('sfsi.mask_heads'):
            mask1, mask2 = self.sample(x, out_hw)
        self.ran_densely = False  # the last forward took the dense route
        if sparse and self._samples_every_pixel(mask1, mask2):
            self.ran_densely = True
            out = self._forward_dense(x)
        elif sparse:
            out = self._forward_sparse(x, out_hw, mask1, mask2)
        else:
            out = self._forward_masked(x, mask1, mask2)
        self._record(x, out_hw, mask1, mask2)
        return out

    @staticmethod
    def _samples_every_pixel(*masks) -> bool:
        """Every pixel sampled, with unit values: Eq. 3 interpolates nothing and the
        block is the dense bottleneck."""
        return all(bool((m.hard >= 1).all()) and (m.value is m.hard or bool((m.value == 1).all()))
                   for m in masks)

    def _forward_dense(self, x):
        """The dense route when every pixel is sampled: the bottleneck itself, its
        BatchNorms folded (a deformable conv2 runs as mmcv's module)."""
        if not self.deformable:
            return run_folded_block(self, x, overwrite_input=self.may_overwrite(x, x))
        conv1, conv3 = (self.folded(f'conv{i}', getattr(self, f'conv{i}'),
                                    getattr(self, f'norm{i}')) for i in (1, 3))
        # mmcv's deformable conv reads its input as contiguous NCHW memory
        out = self.relu(self.norm2(self.conv2(conv1(x).relu_().contiguous())))
        identity = x if self.downsample is None else self.downsample(x)
        out = conv3(out.contiguous(memory_format=torch.channels_last))
        return out.add_(identity).relu_()

    def _forward_masked(self, x, mask1, mask2):
        out = self.relu(self.norm1(self.conv1(x)))
        out = interpolate_dense(out, mask1.hard, self.conv1_sigma, self.kernel_size,
                                mask1.value)                                     # Eq. 3
        out = self.relu(self.norm2(self.conv2(out)))
        out = interpolate_dense(out, mask2.hard, self.conv2_sigma, self.kernel_size,
                                mask2.value)                                     # Eq. 3
        out = self.norm3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def _forward_sparse(self, x, out_hw, mask1, mask2):
        """Only the sampled pixels are computed (the record_function labels name the
        parts for :func:`mmdyn.analysis.sfsi.profile_sparse_parts`)."""
        batch, _, height, width = x.shape  # x is channels-last (forward)
        with record_function('sfsi.conv1'):
            # conv1 (1x1) on the sampled pixels: a row gather and one GEMM (fused natively).
            pixels1 = sampled_pixels(mask1.hard)
            conv1 = self.folded('conv1', self.conv1, self.norm1)
            hidden1 = gather_gemm(pixel_rows(x), pixels1.view(-1, 1), conv1.matrix,
                                  conv1.bias, relu=True)
            if self.sampling == 'relu':
                hidden1.mul_(pixel_rows(mask1.value).index_select(0, pixels1))
        with record_function('sfsi.interp1'):
            # written straight into conv2's gather table (its zero row appended)
            out1, table = map_with_zero_row(batch, hidden1.shape[1], height, width, hidden1)
            interpolate_rows(hidden1, pixels1, mask1.hard, self.conv1_sigma.detach(),
                             self.kernel_size, out=out1, kernel=self._blur(1))   # Eq. 3
        with record_function('sfsi.conv2'):
            # conv2 (3x3, strided / dilated / grouped / deformable) on its sampled pixels.
            pixels2 = sampled_pixels(mask2.hard)
            conv = self.conv2
            taps = conv_tap_rows(pixels2, out_hw, (height, width), conv.stride[0],
                                 conv.dilation[0], conv.padding[0],
                                 zero_row=batch * height * width)
            if self.deformable:
                hidden2 = self._deformable_rows(table, taps, pixels2, out_hw,
                                                (height, width)).relu_()
            else:
                hidden2 = conv_rows(table, taps, self._matrix('conv2'), self.folded(
                    'conv2', self.conv2, self.norm2).bias, relu=True)
            if self.sampling == 'relu':
                hidden2.mul_(pixel_rows(mask2.value).index_select(0, pixels2))
        with record_function('sfsi.conv3_interp2'):
            conv3 = self.folded('conv3', self.conv3, self.norm3)
            if self.sparse_conv3 == 'sampled':
                # conv3 before the interpolation (exact: both linear), on sampled pixels.
                residual, _ = self._residual_sparse(x, conv3.bias)  # identity + conv3's bias
                out = interpolate_rows(gemm(hidden2, conv3.matrix, None), pixels2, mask2.hard,
                                       self.conv2_sigma.detach(), self.kernel_size,
                                       base=residual, kernel=self._blur(2))      # Eq. 3
                return out.relu_()
            # the reference order: interpolate conv2's output, then conv3 on every pixel
            # as one product accumulating onto the residual, bias and ReLU fused.
            out2 = interpolate_rows(hidden2, pixels2, mask2.hard,
                                    self.conv2_sigma.detach(), self.kernel_size,
                                    kernel=self._blur(2))
            residual, bias = self._residual_sparse(x, conv3.bias, defer_bias=True)
            gemm_acc(pixel_rows_view(residual), pixel_rows_view(out2), conv3.matrix, bias,
                     relu=True)
            return residual

    def _blur(self, conv: int) -> Tensor:
        """The 1-D Gaussian of conv ``conv``'s interpolation (Eq. 3), cached while its
        width and the kernel size stay."""
        sigma = getattr(self, f'conv{conv}_sigma')
        return self.cached(f'blur{conv}-{self.kernel_size}', (sigma,),
                           lambda: gaussian_kernel_1d(sigma.detach(), self.kernel_size))

    def _matrix(self, name):
        """conv2's BN-folded weights as grouped tap matrices (cached)."""
        folded = self.folded(name, self.conv2, self.norm2)
        return self.cached(f'{name}-matrix', (folded.weight,),
                           lambda: conv_matrix(folded.weight, self.conv2.groups))

    def _deformable_rows(self, table, taps, pixels, out_hw, in_hw):
        """mmcv's modulated deformable conv (DCNv2) at the sampled pixels only: the
        offset conv on their tap rows, then 9 bilinear taps per pixel, modulated."""
        conv = self.conv2
        offset_conv = conv.conv_offset
        offset_matrix = self.cached('offset-matrix', (offset_conv.weight,),
                                    lambda: conv_matrix(offset_conv.weight.detach()))
        raw = conv_rows(table, taps, offset_matrix, offset_conv.bias.detach())
        dy_dx = torch.cat(raw.chunk(3, dim=1)[:2], dim=1)             # [n, 18]: (dy, dx)
        modulation = raw[:, 18:].sigmoid()                             # [n, 9]
        out_h, out_w = out_hw
        batch = pixels // (out_h * out_w)
        y, x = (pixels // out_w) % out_h, pixels % out_w
        k = torch.arange(3, device=pixels.device) * conv.dilation[0] - conv.padding[0]
        ys = (y * conv.stride[0])[:, None, None] + k[None, :, None]
        xs = (x * conv.stride[0])[:, None, None] + k[None, None, :]
        ys = ys.expand(-1, 3, 3).reshape(-1, 9) + dy_dx[:, 0::2]
        xs = xs.expand(-1, 3, 3).reshape(-1, 9) + dy_dx[:, 1::2]
        samples = bilinear_tap_rows(table, ys, xs, batch, *in_hw) * modulation[..., None]
        folded = self.folded('conv2', conv, self.norm2)
        return grouped_matmul(samples, self._matrix('conv2'), folded.bias)

    def _residual_sparse(self, x, conv3_bias, defer_bias: bool = False):
        """``(residual, bias still to add)``: the shortcut as a channels-last map the
        block may write to, with conv3's folded bias riding on the shortcut conv's
        bias, or added to the identity (or, with ``defer_bias``, returned for a fused
        product to add). The identity is the block input itself, updated in place,
        when the backbone never reads that input again."""
        if self.downsample is None:
            reuse = self.may_overwrite(x, x)
            if defer_bias:
                return (x if reuse else x.clone(memory_format=torch.channels_last)), conv3_bias
            bias = conv3_bias.view(1, -1, 1, 1)
            return (x.add_(bias) if reuse else x + bias), None
        *pools, conv, bn = self.downsample
        for pool in pools:
            x = pool(x)
        shortcut = self.folded('downsample', conv, bn)
        biased = self.cached('downsample+bias', (shortcut.weight, conv3_bias), lambda: FoldedConv(
            shortcut.weight, shortcut.bias + conv3_bias, shortcut.stride))
        return biased(x).contiguous(memory_format=torch.channels_last), None

    # -- records ---------------------------------------------------------------------

    def _record(self, x, out_hw, mask1, mask2):
        """Dense and executed FLOPs (MACs) per sample, counted from the masks used:
        mask heads, conv1/conv2/conv3 at the sampled pixels, the two separable
        interpolations (numerator and normaliser), the shortcut."""
        in_pixels = x.shape[2] * x.shape[3]
        out_pixels = out_hw[0] * out_hw[1]
        c_in, width = self.conv1.in_channels, self.conv1.out_channels
        c_out = self.conv3.out_channels
        conv1_per = conv_macs(c_in, width, 1)
        conv2_per = conv_macs(width, width, 3, self.conv2.groups)
        if self.deformable:
            conv2_per += conv_macs(width, self.conv2.conv_offset.out_channels, 3)
        conv3_per = conv_macs(width, c_out, 1)
        shortcut = 0 if self.downsample is None else out_pixels * conv_macs(c_in, c_out, 1)
        heads = self.conv1_mask.macs(in_pixels) + self.conv2_mask.macs(out_pixels)
        # counted in float32: bf16 masks (bf16 weights / autocast) cannot hold counts > 256
        sampled1 = mask1.hard.float().sum(dim=(1, 2, 3))
        sampled2 = mask2.hard.float().sum(dim=(1, 2, 3))
        dense = in_pixels * conv1_per + out_pixels * (conv2_per + conv3_per) + shortcut
        executed = heads + shortcut + blur_macs(in_pixels, width + 1, self.kernel_size) \
            + sampled1 * conv1_per + sampled2 * conv2_per
        if self.sparse_conv3 == 'sampled':  # conv3 on sampled pixels, 4x wider blur
            executed = executed + sampled2 * conv3_per \
                + blur_macs(out_pixels, c_out + 1, self.kernel_size)
        else:
            executed = executed + out_pixels * conv3_per \
                + blur_macs(out_pixels, width + 1, self.kernel_size)
        # the dense route (every pixel sampled) runs the heads and the bottleneck
        # itself, no interpolation
        ran = torch.full_like(sampled2, float(heads + dense)) if self.ran_densely else None
        self.record = SFSIBlockRecord(
            name=self.block_name, mask=mask2.hard, activation_rate=sampled2 / out_pixels,
            dense_flops=float(dense), executed_flops=executed, ran_flops=ran,
            grid=PatchGrid(*out_hw, 1), conv1_mask=mask1.hard,
            conv1_rate=sampled1 / in_pixels, soft_masks=(mask1.soft, mask2.soft))


@MODELS.register_module()
class SFSIResNet(DynamicResNetMixin, ResNet):
    """SFSI-ResNet (depth 50/101/152; ResNeXt through ``groups`` / ``base_width``).

    Xie et al., "Spatially Adaptive Inference with Stochastic Feature Sampling and
    Interpolation", ECCV 2020.

    Args:
        depth (int): Depth of the ResNet, one of {50, 101, 152}.
        groups (int): ResNeXt's number of groups of the 3x3 convs (1: ResNet).
            Default: 1.
        base_width (int): ResNeXt's base width per group (used when ``groups`` > 1).
            Default: 4.
        sampling (str): ``'stochastic'`` (Gumbel, noise kept at test),
            ``'deterministic'`` (Gumbel-softmax, thresholded at test) or ``'relu'``
            (ReLU gating). Default: 'stochastic'.
        grid_prior_interval (int, optional): every k-th pixel is always sampled;
            None disables it. Default: 11.
        interpolation_kernel (int): size of the Gaussian interpolation kernel (odd).
            Default: 7.
        init_sigma (float): initial inverse width of every interpolation kernel
            (learnable). Default: 3.0.
        mask_init_bias (float): initial mask-head bias (3: masks start almost fully
            on). Default: 3.0.
        temperature (float): Gumbel temperature in training (hooks change it).
            Default: 1.0.
        test_temperature (float): Gumbel temperature at inference. Default: 0.01.
        sampling_seed (int, optional): seed of the inference-time sampling noise
            (None: torch's RNG). Default: None.
        sparse_conv3 (str): how the sparse path runs conv3: ``'dense'`` (the reference
            order: interpolate conv2's output, conv3 on every pixel) or ``'sampled'``
            (on the sampled pixels, then the interpolation of its 4x wider output:
            fewer FLOPs, slower on the CPUs measured). Both equal the masked network;
            they differ in cost (see docs/benchmarks.md). Default: 'dense'.
        execution_mode (str): ``'auto'`` (masked in training, sparse in eval),
            ``'masked'`` or ``'sparse'`` (inference only). Default: 'auto'.
        contract_dilation (bool): mmseg ``ResNetV1c`` semantics. Default: False.
        multi_grid (Sequence[int], optional): mmseg ``ResNetV1c``'s multi-grid
            dilations; not supported, must be None. Default: None.
        num_stages (int): number of ResNet stages, an int in [1, 4]. Default: 4.
        dcn (dict, optional): deformable conv config as in mmdet's ``ResNet``; only
            ``dict(type='DCNv2', deform_groups=1)`` (mmcv's modulated deformable
            conv) without ``fallback_on_stride``. Default: None.
        **kwargs: other arguments: mmdet's ``ResNet`` (``stage_with_dcn`` as there;
            ``style='pytorch'``, no ``plugins`` or ``with_cp=True``; ``norm_cfg`` must
            be a BatchNorm).
    """

    mask_terms = MaskTerms('sampling rate', 'sampled pixel', 'interpolated pixel')
    arch_settings = {
        50: (SFSIBottleneck, (3, 4, 6, 3)),
        101: (SFSIBottleneck, (3, 4, 23, 3)),
        152: (SFSIBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int, groups: int = 1, base_width: int = 4,
                 sampling: str = 'stochastic', grid_prior_interval: Optional[int] = 11,
                 interpolation_kernel: int = 7, init_sigma: float = 3.0,
                 mask_init_bias: float = 3.0, temperature: float = 1.0,
                 test_temperature: float = 0.01, sampling_seed: Optional[int] = None,
                 sparse_conv3: str = 'dense',
                 execution_mode: str = 'auto', contract_dilation: bool = False,
                 multi_grid: Optional[Sequence[int]] = None, num_stages: int = 4,
                 dcn: Optional[Dict] = None, **kwargs):
        if depth not in self.arch_settings:
            raise ValueError(f'depth={depth!r} is not supported by SFSIResNet; choose one '
                             f'of {sorted(self.arch_settings)}')
        if multi_grid is not None:
            raise ValueError('multi_grid is not supported by SFSIResNet')
        check_resnet_sizes('SFSIResNet', num_stages, **kwargs)
        check_resnext_width('SFSIResNet', groups, base_width)
        check_norm_cfg('SFSIResNet', kwargs.get('norm_cfg'))
        check_number(init_sigma, 'init_sigma', low=0, low_inclusive=False)
        check_number(mask_init_bias, 'mask_init_bias')
        check_number(test_temperature, 'test_temperature', low=0, low_inclusive=False)
        check_sampling_seed(sampling_seed)
        if dcn is not None:
            if dcn.get('type') != 'DCNv2' or dcn.get('deform_groups', 1) != 1:
                raise ValueError(f"dcn={dcn!r}: SFSIResNet supports dict(type='DCNv2', "
                                 "deform_groups=1) (mmcv's modulated deformable conv)")
            if dcn.get('fallback_on_stride'):
                raise ValueError('dcn fallback_on_stride is not supported by SFSIResNet')
        self.groups, self.base_width = groups, base_width
        self.contract_dilation = contract_dilation
        self.block_options = dict(
            sampling=check_sampling_variant(sampling),
            grid_prior_interval=check_grid_prior(grid_prior_interval),
            interpolation_kernel=check_kernel_size(interpolation_kernel),
            init_sigma=init_sigma, mask_init_bias=mask_init_bias,
            test_temperature=test_temperature, sparse_conv3=check_sparse_conv3(sparse_conv3))
        super().__init__(depth, num_stages=num_stages, dcn=dcn, **kwargs)
        self.finish_dynamic_init(execution_mode, temperature)
        self.set_sampling_seed(sampling_seed)

    def set_sampling_seed(self, seed: Optional[int]):
        """Reproducible stochastic inference: one generator, drawn block by block."""
        check_sampling_seed(seed)
        generator = None if seed is None else SeededGenerators(seed)
        for block in self.dynamic_blocks():
            block.generator = generator

    def sparsity_summary(self):
        """Per-conv sampling rates: ``<block>.conv1`` and ``<block>.conv2`` (the mean
        activation rate is then the mean over every sampled conv)."""
        summary = super().sparsity_summary()
        rates = {}
        for forward in self._forward_records:
            for block in forward.blocks:
                rates.setdefault(f'{block.name}.conv1', []).append(block.conv1_rate)
                rates.setdefault(f'{block.name}.conv2', []).append(block.activation_rate)
        summary.block_rates = {name: torch.stack(r).mean(0) for name, r in rates.items()}
        return summary

    def set_sampling(self, variant: str):
        check_sampling_variant(variant)
        for block in self.dynamic_blocks():
            block.sampling = variant

    def set_sparse_conv3(self, value: str):
        check_sparse_conv3(value)
        for block in self.dynamic_blocks():
            block.sparse_conv3 = value

    def set_grid_prior(self, interval: Optional[int]):
        interval = check_grid_prior(interval)
        for block in self.dynamic_blocks():
            block.grid_prior_interval = interval

    def make_res_layer(self, block, inplanes, planes, num_blocks, stride=1, dilation=1,
                       avg_down=False, conv_cfg=None, norm_cfg=dict(type='BN'), **kwargs):
        """mmdet's ResLayer (ResNeXt widths) with mmseg's contract_dilation."""
        stage = len(self.res_layers)
        return plain_res_layer(
            block, inplanes, planes, num_blocks, stride, dilation, avg_down,
            self.contract_dilation, conv_cfg, norm_cfg, groups=self.groups,
            base_width=self.base_width, base_channels=self.base_channels,
            **self.block_options, **kwargs,
            per_block=lambda k: dict(block_name=f'layer{stage + 1}.{k}'))

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
