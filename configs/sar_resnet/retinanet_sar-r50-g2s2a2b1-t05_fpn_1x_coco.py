# RetinaNet with SAR-ResNet-50, G2s2a2b1 (2 refinement groups, base branch at 1/2 resolution
# and 1/2 width, refinement at full width), refinement-rate target t=0.5 (SAR Table VIII).
# SAR-ResNet has no public ImageNet weights: pre-train the backbone, then set
# model.backbone.init_cfg = dict(type='Pretrained', checkpoint='<local .pth>').
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/sar_runtime.py']
model = dict(
    type='DynRetinaNet',
    backbone=dict(type='SARResNet', sar_setting='G2s2a2b1', mask_size=(7, 7, 2),
                  frozen_stages=-1, init_cfg=None),  # frozen_stages=1 once pre-trained
    sparsity_loss=dict(type='RefineRateLoss', target=0.5, loss_weight=10.0, mode='batch'))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
