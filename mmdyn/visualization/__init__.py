"""Mask overlays and plots."""
from .masks import (block_mask_on_input, overlay, plot_block_rates, plot_sparsity_histograms,
                    save_block_overlays)

__all__ = ['block_mask_on_input', 'overlay', 'plot_block_rates', 'plot_sparsity_histograms', 'save_block_overlays']
