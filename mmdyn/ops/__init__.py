"""Pure-PyTorch primitives for spatially dynamic networks.

Nothing in this package imports mmcv, mmdet or mmseg: it runs with torch (and numpy)
alone, so it can be reused by plain PyTorch code and on machines without mmcv.
"""
from .attribute_conv import (ConvOption, DynamicAttributeConv2d, as_option,
                             attribute_conv2d, resize_kernel, transposed_weight)
from .flops import BlockRecord, ForwardRecord, MaskTerms, conv_macs, patch_extents
from .gemm import gemm, gemm_acc, gemm_into
from .gumbel import gumbel_gate
from .kernel_choice import kernel_choices, pin_kernel
from .masker import PatchMasker
from .patches import (PatchGrid, Window, active_patches, border_groups, border_pixels,
                      cropped_window, gather_windows, grouped_rows, pair, patch_halo_pixels,
                      patch_pixels, pixel_rows, scatter_add_patches, scatter_add_rows,
                      upsample_patch_mask)
from .pixel_sampling import (PixelMaskHead, apply_grid_prior, conv_rows, conv_tap_rows,
                             interpolate_dense, interpolate_rows, sample_mask,
                             sampled_pixels)
from .sparse_conv import FoldedConv, fold_conv_bn
from .stem import stem_conv_pool
from .window_conv import conv_on_windows

__all__ = [
    'ConvOption', 'DynamicAttributeConv2d', 'as_option', 'attribute_conv2d', 'resize_kernel',
    'transposed_weight',
    'BlockRecord', 'ForwardRecord', 'MaskTerms', 'conv_macs', 'patch_extents', 'gumbel_gate',
    'PatchMasker', 'PatchGrid', 'Window', 'active_patches', 'gather_windows',
    'scatter_add_patches', 'scatter_add_rows', 'upsample_patch_mask', 'patch_halo_pixels',
    'pixel_rows',
    'patch_pixels', 'pair', 'border_groups', 'border_pixels', 'cropped_window',
    'grouped_rows', 'conv_on_windows', 'stem_conv_pool',
    'FoldedConv', 'gemm', 'gemm_acc', 'gemm_into', 'kernel_choices', 'pin_kernel',
    'fold_conv_bn', 'PixelMaskHead', 'apply_grid_prior', 'conv_rows', 'conv_tap_rows',
    'interpolate_dense', 'interpolate_rows', 'sample_mask', 'sampled_pixels'
]
