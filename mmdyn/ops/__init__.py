"""Pure-PyTorch primitives for spatially dynamic networks.

Nothing in this package imports mmcv, mmdet or mmseg: it runs with torch (and numpy)
alone, so it can be reused by plain PyTorch code and on machines without mmcv.
"""
from .flops import BlockRecord, ForwardRecord, conv_macs, patch_extents
from .gumbel import gumbel_gate
from .masker import PatchMasker
from .patches import (PatchGrid, Window, active_patches, gather_windows, pair, patch_pixels,
                      pixel_rows, scatter_add_patches, upsample_patch_mask)
from .pixel_sampling import (PixelMaskHead, apply_grid_prior, conv_rows, conv_tap_rows,
                             interpolate_dense, interpolate_rows, sample_mask,
                             sampled_pixels)
from .sparse_conv import FoldedConv, fold_conv_bn

__all__ = [
    'BlockRecord', 'ForwardRecord', 'conv_macs', 'patch_extents', 'gumbel_gate',
    'PatchMasker', 'PatchGrid', 'Window', 'active_patches', 'gather_windows',
    'scatter_add_patches', 'upsample_patch_mask', 'pixel_rows', 'patch_pixels', 'pair',
    'FoldedConv',
    'fold_conv_bn', 'PixelMaskHead', 'apply_grid_prior', 'conv_rows', 'conv_tap_rows',
    'interpolate_dense', 'interpolate_rows', 'sample_mask', 'sampled_pixels'
]
