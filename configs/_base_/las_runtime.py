# Shared by every LAS-ResNet config: import mmdyn (registers its modules in both the
# mmdet and mmseg scopes) and push the LAS schedules into the model from runner.iter.
custom_imports = dict(imports=['mmdyn'], allow_failed_imports=False)
custom_hooks = [
    # Gumbel temperature, exponential 5.0 -> 0.1 over training (LAS recipe).
    dict(type='TemperatureHook', start=5.0, end=0.1, schedule='exp'),
    # Sparsity target: 1.0 stepping down to the loss target in 3 steps by mid-training.
    dict(type='SparsityTargetHook', num_steps=3, end_fraction=0.5),
]
