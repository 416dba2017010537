# Mask R-CNN + FPN with SFSI-ResNet-101 (Xie et al., ECCV 2020) on COCO, sparse loss weight
# 0.1, DCNv2 in conv3-conv5, grid prior k=11, 7x7 interpolation.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r101_fpn_1x_coco.py', '../_base_/sfsi_runtime.py']
model = dict(
    type='DynMaskRCNN',
    backbone=dict(type='SFSIResNet', dcn=dict(type='DCNv2', deform_groups=1),
                  stage_with_dcn=(False, True, True, True)),
    sparsity_loss=dict(type='SFSISparseLoss', loss_weight=0.1))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
