# deeplabv3 with LAS-ResNet-50 (mmseg's dilated ResNetV1c layout, output stride 8) on VOC 2012 aug.
# S=4 in every stage and FLOPs target t=0.5 are mmdyn's choice (LAS reports detection only).
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-20k_voc12aug-512x512.py', '../_base_/las_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    backbone=dict(type='LASResNet', deep_stem=True, granularity=(4, 4, 4, 4)),
    sparsity_loss=dict(type='FlopsRatioLoss', target=0.5, loss_weight=10.0))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
