"""SAR's activation-rate losses (Han et al., IEEE TIP 2021, Sec. III-D).

r_{l,i}: the fraction of block l's output pixels that sample i refines (mean over the
G groups), differentiable through the straight-through masks; t the target rate.

    batch target   L = lambda * 1/L sum_l ( 1/N sum_i r_{l,i} - t )^2         (Eq. 10)
    sample target  L = lambda * 1/(L N) sum_l sum_i ( r_{l,i} - t )^2          (Eq. 11)

The batch target lets easy and hard images share the budget; the sample target holds
every image to it. lambda defaults to 10: with 1, the learning study's SAR-ResNet-18
ended at a refine rate of 0.332 for t = 0.3, with 10 at 0.306 (the quadratic penalty's
offset from the target shrinks as 1/lambda; see :mod:`.flops_loss`).
"""
import torch
from mmengine.registry import MODELS

from .flops_loss import ScheduledSparsityLoss

TARGET_MODES = ('batch', 'sample')


@MODELS.register_module()
class RefineRateLoss(ScheduledSparsityLoss):
    """``loss_sparsity`` from the refinement rates of every dynamic block."""

    def __init__(self, target: float = 0.5, loss_weight: float = 10.0, mode: str = 'batch'):
        super().__init__(target, loss_weight)
        if mode not in TARGET_MODES:
            raise ValueError(f'mode={mode!r} is not one of {TARGET_MODES} '
                             '(batch target: Eq. 10, sample target: Eq. 11)')
        self.mode = mode

    def forward(self, record) -> dict:
        rates = torch.stack([b.activation_rate for b in record.blocks])  # [L, N]
        if self.mode == 'batch':
            term = ((rates.mean(dim=1) - self.target) ** 2).mean()   # Eq. 10
        else:
            term = ((rates - self.target) ** 2).mean()              # Eq. 11
        return dict(loss_sparsity=self.loss_weight * term,
                    **self.log_values(record, self.target))
