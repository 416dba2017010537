# Shared by every CAD-ResNet config (content-adaptive downsampling, Hesse et al., CVPR-W
# 2023): import mmdyn (registers its modules in both the mmdet and mmseg scopes).
custom_imports = dict(imports=['mmdyn'], allow_failed_imports=False)
# Learned masks (LearnedMask + KeepRatioLoss): a straight-through Gumbel gate at a constant
# temperature 1 (the CAD reference trains with --tau 1); the keep-ratio target is fixed (no
# SparsityTargetHook). Edge masks have no gate: their configs set `custom_hooks = []`.
custom_hooks = [dict(type='TemperatureHook', start=1.0, end=1.0, schedule='constant')]
