"""Mask overlays and plots."""
from .masks import (block_mask_on_input, legend_strip, overlay, plot_block_rates,
                    plot_sparsity_histograms, save_block_overlays, write_with_legend)

__all__ = ['block_mask_on_input', 'legend_strip', 'overlay', 'plot_block_rates',
           'plot_sparsity_histograms', 'save_block_overlays', 'write_with_legend']
