"""Sparsity loss of spatially dynamic networks (LAS Sec. 3.5; DynConv Sec. 3.3).

    L_flops  = (F_dyn / F_stat - t)^2              (LAS Sec. 3.5, the FLOPs-ratio loss)
    L_bounds = mean_blocks[ relu(r_b - u)^2 + relu(l - r_b)^2 ]
    u = 1 - c (1 - t),  l = c t,  c = cos^2(pi/2 * min(1, p / p_anneal))

r_b is block b's executed/dense FLOPs ratio, p the fraction of training done. At the
start the bounds pin every block to the target, then relax to [0, 1] by
``p = anneal_fraction`` so the network can distribute its budget.

The weight sets how close training ends to the target. A quadratic penalty w (r - t)^2
settles where its pull 2 w (r - t) balances the task loss's push towards more
computation, dL_task/dr: r - t = (dL_task/dr) / 2w. With w = 1 the learning study's
LAS-ResNet-18 ended +0.06 above t = 0.3 (FLOPs ratio 0.363 on the test digits); with
w = 10, the LASNet recipe's ``lambda_act``, +0.016 (0.316), accuracy unchanged. Hence
the default ``loss_weight=10`` here and in :class:`RefineRateLoss`.
"""
import math

import torch
from mmengine.registry import MODELS
from torch import nn


def check_target(target: float) -> float:
    if not isinstance(target, (int, float)) or isinstance(target, bool) \
            or not 0.0 < target <= 1.0:
        raise ValueError(f'sparsity target must be a number in (0, 1], got {target!r}')
    return float(target)


class ScheduledSparsityLoss(nn.Module):
    """The target/progress plumbing every sparsity loss shares: hooks call
    :meth:`set_target` and :meth:`set_progress` from ``runner.iter``."""

    def __init__(self, target: float = 0.5, loss_weight: float = 1.0):
        super().__init__()
        self.final_target = check_target(target)
        self.loss_weight = float(loss_weight)
        self.target = self.final_target
        self.progress = 1.0

    def set_target(self, target: float):
        self.target = check_target(target)

    def set_progress(self, progress: float):
        self.progress = min(max(float(progress), 0.0), 1.0)

    @staticmethod
    def log_values(record, target: float) -> dict:
        """Log-only values (no "loss" in their keys): FLOPs ratio, mean block
        activation rate, current target."""
        ratio = (record.executed_flops / record.dense_flops).mean()
        activation = torch.stack([b.activation_rate.mean() for b in record.blocks]).mean()
        return dict(flops_ratio=ratio.detach(), activation_rate=activation.detach(),
                    sparsity_target=ratio.new_tensor(target))


@MODELS.register_module()
class FlopsRatioLoss(ScheduledSparsityLoss):
    """Returns ``loss_sparsity`` (summed into the total by mmengine) plus log-only
    values whose keys avoid the substring "loss"."""

    def __init__(self, target: float = 0.5, loss_weight: float = 10.0,
                 bounds_weight: float = 1.0, anneal_fraction: float = 1 / 3):
        super().__init__(target, loss_weight)
        if not 0.0 < anneal_fraction <= 1.0:
            raise ValueError(f'anneal_fraction must be in (0, 1], got {anneal_fraction}')
        self.bounds_weight = float(bounds_weight)
        self.anneal_fraction = float(anneal_fraction)

    def bounds(self):
        anneal = math.cos(math.pi / 2 * min(1.0, self.progress / self.anneal_fraction)) ** 2
        return anneal * self.target, 1.0 - anneal * (1.0 - self.target)

    def forward(self, record) -> dict:
        """``record``: the backbone's :class:`~mmdyn.ops.ForwardRecord` of the batch."""
        ratio = (record.executed_flops / record.dense_flops).mean()
        flops_term = (ratio - self.target) ** 2
        lower, upper = self.bounds()
        block_ratios = torch.stack([(b.executed_flops / b.dense_flops).mean()
                                    for b in record.blocks])
        bounds_term = (torch.relu(block_ratios - upper) ** 2
                       + torch.relu(lower - block_ratios) ** 2).mean()
        return dict(
            loss_sparsity=self.loss_weight * (flops_term + self.bounds_weight * bounds_term),
            **self.log_values(record, self.target))
