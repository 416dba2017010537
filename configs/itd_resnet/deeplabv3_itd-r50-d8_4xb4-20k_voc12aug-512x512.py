# DeepLabv3 with ITD-ResNet-50 in mmseg's dilated ResNetV1c layout (strides 1-2-1-1,
# dilations 1-1-2-4, contracted dilation: positions C, D default to stride 1 with dilation
# 1 and 2). Segmentation heads take any feature size and the segmentor resizes its logits to
# the image, so the outputs keep their actual sizes (output_size='actual'). The default
# permutation is mmseg's ResNetV1c-50: the mmseg DeepLabv3 R50-D8 VOC checkpoint loads
# unchanged; tools/analysis/itd_oracle.py scores each image's mIoU per permutation.
# Offline: model.pretrained points at a local resnet50_v1c checkpoint.
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-20k_voc12aug-512x512.py',
          '../_base_/itd_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    pretrained='checkpoints/resnet50_v1c-2cccc1ad.pth',
    backbone=dict(type='ITDResNet', deep_stem=True),
    sparsity_loss=None)
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
