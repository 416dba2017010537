from .deployment_hooks import FuseConvBNHook
from .option_hooks import RandomOptionHook
from .random_state_hook import RandomStateHook
from .schedule_hooks import SparsityTargetHook, TemperatureHook

__all__ = ['FuseConvBNHook', 'RandomOptionHook', 'RandomStateHook', 'TemperatureHook',
           'SparsityTargetHook']
