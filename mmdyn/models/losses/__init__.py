from .flops_loss import FlopsRatioLoss, ScheduledSparsityLoss, check_target
from .refine_rate_loss import RefineRateLoss

__all__ = ['FlopsRatioLoss', 'RefineRateLoss', 'ScheduledSparsityLoss', 'check_target']
