# The demo's dynamic model: the static twin with LAS-ResNet-18 (S=4-4-2-1), fine-tuned
# from the twin's weights (python -m mmdyn.demo sets load_from), with the LAS schedules
# and sparsity metric. FLOPs target 0.7: conv1 stays dense in every block, so 0.7 of the
# FLOPs is about 40% of the patches; a lower target starves a detector this small.
_base_ = ['./faster-rcnn_r18_fpn_demo-fixture.py', '../_base_/las_runtime.py']
model = dict(
    type='DynFasterRCNN',
    backbone=dict(type='LASResNet', granularity=(4, 4, 2, 1)),
    sparsity_loss=dict(type='FlopsRatioLoss', target=0.7, loss_weight=10.0))
custom_hooks = [
    dict(type='TemperatureHook', start=1.0, end=0.1),
    dict(type='SparsityTargetHook', num_steps=3, end_fraction=0.5),
]
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
