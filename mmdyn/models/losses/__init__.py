from .flops_loss import FlopsRatioLoss, ScheduledSparsityLoss, check_target
from .keep_ratio_loss import KeepRatioLoss
from .refine_rate_loss import RefineRateLoss
from .sfsi_sparse_loss import SFSISparseLoss

__all__ = ['FlopsRatioLoss', 'KeepRatioLoss', 'RefineRateLoss', 'ScheduledSparsityLoss', 'SFSISparseLoss', 'check_target']
