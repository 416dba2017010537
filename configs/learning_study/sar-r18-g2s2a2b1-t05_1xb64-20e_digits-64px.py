# SAR-ResNet-18 (Han et al. 2021) on the digits, setting G2s2a2b1 (groups 2, base branch
# at 1/2 resolution, alpha 2, beta 1); region grids K = 4-4-2 for the 16x16 / 8x8 / 4x4
# maps of layers 1-3 at 64x64 input (the ImageNet models' 7-7-2 at 224x224 gives 8x8,
# 4x4 and 7x7 pixel regions; here 4x4, 2x2 and 2x2). Refinement-rate loss, target
# t = 0.5; temperature 1 -> 0.01 and the target schedule of sar_runtime.py.
_base_ = ['../_base_/digits_study.py', '../_base_/sar_runtime.py']
model = dict(
    type='DynImageClassifier',
    backbone=dict(_delete_=True, type='SARResNet', depth=18, sar_setting='G2s2a2b1',
                  mask_size=(4, 4, 2), min_input_size=64, out_indices=(3, ), init_cfg=None),
    sparsity_loss=dict(type='RefineRateLoss', target=0.5, loss_weight=10.0, mode='batch'))
val_evaluator = [dict(type='Accuracy', topk=(1, )), dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
