from .flops_loss import FlopsRatioLoss, ScheduledSparsityLoss, check_target
from .keep_ratio_loss import KeepRatioLoss
from .refine_rate_loss import RefineRateLoss

__all__ = ['FlopsRatioLoss', 'KeepRatioLoss', 'RefineRateLoss', 'ScheduledSparsityLoss', 'check_target']
