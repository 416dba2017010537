from .schedule_hooks import SparsityTargetHook, TemperatureHook

__all__ = ['TemperatureHook', 'SparsityTargetHook']
