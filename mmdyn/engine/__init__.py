from .deployment_hooks import FuseConvBNHook
from .random_state_hook import RandomStateHook
from .schedule_hooks import SparsityTargetHook, TemperatureHook

__all__ = ['FuseConvBNHook', 'RandomStateHook', 'TemperatureHook', 'SparsityTargetHook']
