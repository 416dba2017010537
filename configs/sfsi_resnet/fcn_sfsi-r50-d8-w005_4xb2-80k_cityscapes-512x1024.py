# FCN with SFSI-ResNet-50 (stochastic feature sampling and interpolation, Xie et al.,
# ECCV 2020) on Cityscapes, dilated output stride 8 (mmseg ResNetV1c: strides 1-2-1-1,
# dilations 1-1-2-4, contracted dilation), sparse loss weight 0.05 (the paper sweeps 0.05 /
# 0.1 / 0.2 / 0.3 for segmentation), grid prior k=11, 7x7 Gaussian interpolation, no DCN.
# Fine-tunes from the ImageNet ResNet-50-V1c (open-mmlab://resnet50_v1c): put the file
# under checkpoints/ (nothing downloads).
_base_ = ['mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py',
          '../_base_/sfsi_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    pretrained='checkpoints/resnet50_v1c-2cccc1ad.pth',
    backbone=dict(type='SFSIResNet', deep_stem=True, sampling='stochastic',
                  grid_prior_interval=11, interpolation_kernel=7),
    sparsity_loss=dict(type='SFSISparseLoss', loss_weight=0.05))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
