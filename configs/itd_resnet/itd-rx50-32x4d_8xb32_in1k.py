# As itd-r50_8xb32_in1k.py with ResNeXt-50 32x4d (mmpretrain's resnext50-32x4d recipe and
# checkpoint resnext50_32x4d_b32x8_imagenet_20210429-56066e27.pth, or torchvision's
# resnext50_32x4d): the grouped 3x3 conv of each stage's first block is dynamic (stride 1/2
# swaps the in/out channel axes within each group).
_base_ = ['mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py', '../_base_/itd_runtime.py']
model = dict(
    type='DynImageClassifier',
    sparsity_loss=None,
    backbone=dict(_delete_=True, type='ITDResNeXt', depth=50, groups=32, base_width=4,
                  out_indices=(3, ), dynamic_positions=('A', 'B', 'C', 'D')))
val_evaluator = [dict(type='Accuracy', topk=(1, 5)), dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
