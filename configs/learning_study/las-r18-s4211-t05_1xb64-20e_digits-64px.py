# LAS-ResNet-18 (LASNet, Han et al. 2022) on the digits: patch granularity S = 4-2-1-1 at
# 64x64 input gives 4x4 patch grids in layers 1-3 (one patch = 2x2 digit pixels) and 2x2
# in layer4; FLOPs-ratio loss with target t = 0.5 (LAS Sec. 3.5), Gumbel temperature
# 5 -> 0.1 and the target stepping down from 1.0 by mid-training (las_runtime.py).
# basic_conv1='sparse': conv1 of each BasicBlock runs only where conv2 reads it for the
# active patches (the dilated mask), so the FLOPs ratio can go below the ~0.49 that a
# dense conv1 leaves at this size (stem, conv1 of every block, gates and shortcuts).
_base_ = ['../_base_/digits_study.py', '../_base_/las_runtime.py']
model = dict(
    type='DynImageClassifier',
    backbone=dict(_delete_=True, type='LASResNet', depth=18, granularity=(4, 2, 1, 1),
                  basic_conv1='sparse', out_indices=(3, ), init_cfg=None),
    sparsity_loss=dict(type='FlopsRatioLoss', target=0.5, loss_weight=10.0))
val_evaluator = [dict(type='Accuracy', topk=(1, )), dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
