# ITD-ResNet-50 on ImageNet (paper Table 1): mmpretrain's ResNet-50 recipe with the first
# block of each stage (positions A-D) made inference-time dynamic. The default permutation
# is the plain ResNet-50, so mmpretrain's checkpoint (resnet50_8xb32_in1k_20210831-ea4938fc.pth)
# or torchvision's (resnet50-0676ba61.pth, backbone keys only) loads unchanged: the parameter
# names are the same. Nothing downloads: put the files under checkpoints/ and ImageNet under
# data/imagenet (mmpretrain layout: train/, val/, meta/val.txt). Table 1 (best / median /
# worst over 4 dynamic positions):
#   python tools/analysis/itd_oracle.py configs/itd_resnet/itd-r50_8xb32_in1k.py \
#       checkpoints/resnet50_8xb32_in1k_20210831-ea4938fc.pth --space stride=1/2,1,2,3,4 \
#       --out-dir work_dirs/itd_in1k_stride      (dilation=1,2,3,4,5 / kernel_size=1,3,5,7,9)
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py', '../_base_/itd_runtime.py']
model = dict(
    type='DynImageClassifier',
    sparsity_loss=None,
    backbone=dict(type='ITDResNet', dynamic_positions=('A', 'B', 'C', 'D')))
val_evaluator = [dict(type='Accuracy', topk=(1, 5)), dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
