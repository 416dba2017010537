# As itd-r50_8xb32_in1k.py with ResNet-101 (mmpretrain's resnet101_8xb32_in1k recipe and
# checkpoint resnet101_8xb32_in1k_20210831-539c63f8.pth, or torchvision's resnet101).
_base_ = ['mmpretrain::resnet/resnet101_8xb32_in1k.py', '../_base_/itd_runtime.py']
model = dict(
    type='DynImageClassifier',
    sparsity_loss=None,
    backbone=dict(type='ITDResNet', dynamic_positions=('A', 'B', 'C', 'D')))
val_evaluator = [dict(type='Accuracy', topk=(1, 5)), dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
