# Shared by every SFSI-ResNet config (stochastic feature sampling and interpolation, Xie et
# al., ECCV 2020): import mmdyn (registers its modules in both the mmdet and mmseg scopes)
# and anneal the Gumbel temperature exponentially from 1 to its final value 0.01 (the
# reference starts at 1 and decays per forward; inference samples at test_temperature=0.01,
# noise kept). SFSI's sparse loss has a fixed weight: no SparsityTargetHook.
custom_imports = dict(imports=['mmdyn'], allow_failed_imports=False)
custom_hooks = [dict(type='TemperatureHook', start=1.0, end=0.01, schedule='exp')]
