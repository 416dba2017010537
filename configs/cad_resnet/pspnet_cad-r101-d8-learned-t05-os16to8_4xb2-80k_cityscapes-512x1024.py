# PSPNet with CAD-ResNet-101 (content-adaptive downsampling, Hesse et al., CVPR-W 2023) on
# Cityscapes, learned masks, output stride 16 -> 8 (CAD Sec. 4.2). The backbone is mmseg's
# dilated output-stride-8 ResNetV1c (strides 1-2-1-1, dilations 1-1-2-4, contracted
# dilation) whose stage-3 downsampling step is adaptive: a shallow CNN on the stage-2
# features (512 channels) decides per 2x2 block of the stride-8 grid whether it keeps full
# resolution (straight-through Gumbel, temperature 1), trained end to end with
# KeepRatioLoss (CAD Eq. 3) towards keeping t=0.5 of the blocks.
# Outputs: 256/512/1024/2048 channels at strides 4/8/8/8, as the dense ResNetV1c-D8.
# Weights: CAD keeps the dense network's parameters and names, so dense checkpoints load
# unchanged (only the mask CNN starts untrained). Nothing downloads; put local files
# under checkpoints/:
#  - the mmseg recipe (80k iterations) starts from the ImageNet ResNet-101-V1c
#    (open-mmlab://resnet101_v1c = resnet101_v1c-e67eebb6.pth), model.pretrained below;
#  - or fine-tune from the dense output-stride-8 PSPNet R101-D8 Cityscapes checkpoint
#    (mmseg model zoo) with load_from = 'checkpoints/<file>.pth'.
_base_ = ['mmseg::pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-512x1024.py',
          '../_base_/cad_runtime.py']
model = dict(
    type='DynEncoderDecoder',
    pretrained='checkpoints/resnet101_v1c-e67eebb6.pth',
    backbone=dict(type='CADResNet', base_output_stride=16,
                  mask_source=dict(type='LearnedMask', in_channels=512)),
    sparsity_loss=dict(type='KeepRatioLoss', target=0.5, loss_weight=1.0))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
