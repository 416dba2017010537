from .flops_loss import FlopsRatioLoss, check_target

__all__ = ['FlopsRatioLoss', 'check_target']
