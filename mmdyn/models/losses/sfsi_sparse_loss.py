"""SFSI's sparse loss (Xie et al. 2020; the reference code's per-block loss).

    L = w * mean_blocks( 0.25 * mean(p_1) + 0.75 * mean(p_2) )

p_1 / p_2: the soft sampling masks of a bottleneck's conv1 and conv2 (sigmoid of the
mask logits; the gate itself for ReLU gating), averaged over pixels and the batch. The
reference divides its weight by the number of blocks and sums, i.e. averages over
blocks. The paper sweeps w = 0.02 / 0.05 / 0.1 / 0.2 (detection) and 0.05 / 0.1 / 0.2
/ 0.3 (segmentation). The Gumbel temperature is scheduled by ``TemperatureHook``.
"""
import torch
from mmengine.registry import MODELS
from torch import nn

CONV1_SHARE, CONV2_SHARE = 0.25, 0.75


@MODELS.register_module()
class SFSISparseLoss(nn.Module):
    """``loss_sparsity`` from the soft masks recorded by ``SFSIResNet``, plus log-only
    values (no "loss" in their keys): executed/dense FLOPs ratio and sampling rates."""

    def __init__(self, loss_weight: float = 0.1):
        super().__init__()
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)) \
                or not loss_weight >= 0:
            raise ValueError(f'loss_weight={loss_weight!r}: the SFSI sparse loss weight '
                             'must be a number >= 0 (the paper uses 0.02 - 0.3)')
        self.loss_weight = float(loss_weight)

    def forward(self, record) -> dict:
        blocks = [b for b in record.blocks if getattr(b, 'soft_masks', ())]
        if not blocks:
            raise RuntimeError('SFSISparseLoss needs the records of an SFSIResNet '
                               '(no block recorded soft sampling masks)')
        per_block = torch.stack([CONV1_SHARE * b.soft_masks[0].mean()
                                 + CONV2_SHARE * b.soft_masks[1].mean() for b in blocks])
        ratio = (record.executed_flops / record.dense_flops).mean()
        return dict(
            loss_sparsity=self.loss_weight * per_block.mean(),
            flops_ratio=ratio.detach(),
            conv1_rate=torch.stack([b.conv1_rate.mean() for b in blocks]).mean().detach(),
            conv2_rate=torch.stack([b.activation_rate.mean() for b in blocks]).mean().detach())
