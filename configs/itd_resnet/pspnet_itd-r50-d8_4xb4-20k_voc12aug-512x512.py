# PSPNet with ITD-ResNet-50 (dilated ResNetV1c layout), as
# deeplabv3_itd-r50-d8_4xb4-20k_voc12aug-512x512.py.
_base_ = ['mmseg::pspnet/pspnet_r50-d8_4xb4-20k_voc12aug-512x512.py',
          '../_base_/itd_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    pretrained='checkpoints/resnet50_v1c-2cccc1ad.pth',
    backbone=dict(type='ITDResNet', deep_stem=True),
    sparsity_loss=None)
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
