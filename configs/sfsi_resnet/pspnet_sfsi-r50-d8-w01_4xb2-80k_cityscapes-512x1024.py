# PSPNet with SFSI-ResNet-50 (Xie et al., ECCV 2020) on Cityscapes, dilated output stride 8
# (ResNetV1c layout), sparse loss weight 0.1, grid prior k=11, 7x7 interpolation, no DCN.
_base_ = ['mmseg::pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
          '../_base_/sfsi_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    pretrained='checkpoints/resnet50_v1c-2cccc1ad.pth',
    backbone=dict(type='SFSIResNet', deep_stem=True, grid_prior_interval=11),
    sparsity_loss=dict(type='SFSISparseLoss', loss_weight=0.1))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
