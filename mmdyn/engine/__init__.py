from .option_hooks import RandomOptionHook
from .schedule_hooks import SparsityTargetHook, TemperatureHook

__all__ = ['TemperatureHook', 'SparsityTargetHook', 'RandomOptionHook']
