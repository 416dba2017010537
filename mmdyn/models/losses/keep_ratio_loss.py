"""CAD's ratio-target loss for learned downsampling masks (Hesse et al. 2023, Eq. 3).

    L = lambda * ( mean(m_keep) - t )^2

m_keep: the straight-through keep mask of the adaptive step (1 = the block keeps full
resolution), averaged over blocks and the batch; t the target fraction of blocks kept
at full resolution. (The reference code writes the same loss with the fraction of
downsampled blocks, 1 - t; its released model uses 0.5 either way.)
"""
import torch
from mmengine.registry import MODELS

from .flops_loss import ScheduledSparsityLoss


@MODELS.register_module()
class KeepRatioLoss(ScheduledSparsityLoss):
    """``loss_sparsity`` from the keep masks recorded by ``CADResNet``."""

    def forward(self, record) -> dict:
        masks = [b.mask for b in record.blocks if b.mask is not None and b.mask.requires_grad]
        if not masks:
            raise RuntimeError('KeepRatioLoss needs a learned mask source (LearnedMask): '
                               'no recorded keep mask carries a gradient')
        keep = torch.stack([m.float().mean() for m in masks]).mean()
        return dict(loss_sparsity=self.loss_weight * (keep - self.target) ** 2,  # Eq. 3
                    keep_ratio=keep.detach(), **self.log_values(record, self.target))
