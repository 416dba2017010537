# Faster R-CNN + FPN with SFSI-ResNet-101 (stochastic feature sampling and interpolation,
# Xie et al., ECCV 2020) on COCO, sparse loss weight 0.05 (the paper sweeps 0.02 / 0.05 / 0.1
# / 0.2), DCNv2 in conv3-conv5 as the paper's baseline, grid prior k=11, 7x7 Gaussian
# interpolation, Gumbel sampling kept stochastic at inference (temperature 0.01).
# Fine-tunes from the dense ImageNet ResNet-101: only the mask heads and kernel widths
# start untrained (and the DCN offsets, zero-initialised). Offline: point
# model.backbone.init_cfg.checkpoint at a local .pth.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py', '../_base_/sfsi_runtime.py']
model = dict(
    type='DynFasterRCNN',
    backbone=dict(type='SFSIResNet', sampling='stochastic', grid_prior_interval=11,
                  interpolation_kernel=7, dcn=dict(type='DCNv2', deform_groups=1),
                  stage_with_dcn=(False, True, True, True)),
    sparsity_loss=dict(type='SFSISparseLoss', loss_weight=0.05))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
