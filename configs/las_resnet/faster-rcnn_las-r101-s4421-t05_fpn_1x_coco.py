# FasterRCNN with LAS-ResNet-101, spatial granularity S=4-4-2-1, FLOPs target t=0.5 (LAS Table 2/3).
# Fine-tunes from the dense ImageNet ResNet-101 (only the maskers start untrained).
# Offline: point model.backbone.init_cfg.checkpoint to a local .pth.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py', '../_base_/las_runtime.py']
model = dict(
    type='DynFasterRCNN',
    backbone=dict(type='LASResNet', granularity=(4, 4, 2, 1)),
    sparsity_loss=dict(type='FlopsRatioLoss', target=0.5, loss_weight=10.0))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
