# DeepLabv3 with CAD-ResNet-101 (content-adaptive downsampling, Hesse et al., CVPR-W 2023) on
# Cityscapes, edge masks, output stride 16 -> 8 (CAD Sec. 4.2). The backbone is mmseg's
# dilated output-stride-8 ResNetV1c (strides 1-2-1-1, dilations 1-1-2-4, contracted
# dilation) whose stage-3 downsampling step is adaptive: a 2x2 block of the stride-8 grid
# keeps full resolution where the input has an edge (grey value of the normalised image,
# |central difference| >= 0.35, dilated by 11 px), every other block runs at stride 16.
# Outputs: 256/512/1024/2048 channels at strides 4/8/8/8, as the dense ResNetV1c-D8.
# Edge masks have no trainable gate: no sparsity loss (sparsity_loss=None) and no
# temperature; SparsityMetric reports the full-resolution rate and the backbone FLOPs.
# Weights: CAD keeps the dense network's parameters and names, so dense checkpoints load
# unchanged. Nothing downloads; put local files under checkpoints/:
#  - the mmseg recipe (80k iterations) starts from the ImageNet ResNet-101-V1c
#    (open-mmlab://resnet101_v1c = resnet101_v1c-e67eebb6.pth), model.pretrained below;
#  - or take the dense output-stride-8 DeepLabv3 R101-D8 Cityscapes checkpoint (mmseg model
#    zoo): evaluate it as is (python tools/test.py CONFIG CKPT) or fine-tune from it with
#    load_from = 'checkpoints/<file>.pth'.
_base_ = ['mmseg::deeplabv3/deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py',
          '../_base_/cad_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    pretrained='checkpoints/resnet101_v1c-e67eebb6.pth',
    backbone=dict(type='CADResNet', base_output_stride=16,
                  mask_source=dict(type='EdgeMask', threshold=0.35, dilation=11)),
    sparsity_loss=None)
custom_hooks = []  # no learned gate: no Gumbel temperature to schedule
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
