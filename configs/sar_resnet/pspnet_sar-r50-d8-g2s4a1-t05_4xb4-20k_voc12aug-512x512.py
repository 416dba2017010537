# pspnet with SAR-ResNet-50 in mmseg's dilated ResNetV1c layout (strides 1-2-1-1,
# dilations 1-1-2-4, output stride 8), G2s4a1 (2 groups, base branch at 1/4 resolution,
# full width), refinement-rate target t=0.5, on VOC 2012 aug (SAR Table IX).
# SAR-ResNet has no public ImageNet weights: pre-train the backbone, then set
# model.backbone.init_cfg = dict(type='Pretrained', checkpoint='<local .pth>').
_base_ = ['mmseg::pspnet/pspnet_r50-d8_4xb4-20k_voc12aug-512x512.py',
          '../_base_/sar_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    pretrained=None,
    backbone=dict(type='SARResNet', deep_stem=True, sar_setting='G2s4a1',
                  mask_size=(7, 7, 2), init_cfg=None),
    sparsity_loss=dict(type='RefineRateLoss', target=0.5, loss_weight=10.0, mode='batch'))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
