# Shared by every SAR-ResNet config: import mmdyn (registers its modules in both the
# mmdet and mmseg scopes) and push the SAR schedules into the model from runner.iter
# (SAR Appendix B/C).
custom_imports = dict(imports=['mmdyn'], allow_failed_imports=False)
custom_hooks = [
    # Gumbel temperature, exponential 1.0 -> 0.01 over training.
    dict(type='TemperatureHook', start=1.0, end=0.01, schedule='exp'),
    # Refinement-rate target: 1.0 stepping down to the loss target in 3 steps by 30% of
    # training, while the temperature is still >= 0.25. Reached at mid-training
    # (temperature 0.1), a region selector saturated at the last step can no longer move
    # (learning study, digits, seed 1 of t = 0.3: one layer1 group stuck fully on, refine
    # rate 0.376 on the test split; with 30%: 0.314).
    dict(type='SparsityTargetHook', num_steps=3, end_fraction=0.3),
]
