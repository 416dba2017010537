# Mask R-CNN with CAD-ResNet-50 (content-adaptive downsampling, Hesse et al., CVPR-W 2023)
# and edge masks, output stride 32 -> 8: the backbone of
# faster-rcnn_cad-r50-edge035-os32to8_fpn_1x_coco.py (see there for the masks, the
# weights and the strides). Nothing downloads: save torchvision://resnet50 as the local
# file below. Edge masks have no trainable gate: no sparsity loss, no temperature hook.
#
# Strides: backbone outputs at 4/8/8/8 -> FPN levels 4, 8, 8, 8 and 16 (max-pool); RPN
# anchors on those strides with the standard sizes 32..512 (base_sizes 4..64, scales=[8]);
# both RoI extractors (box and mask) sample with featmap_strides 4/8/8/8.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/cad_runtime.py']
model = dict(
    type='DynMaskRCNN',
    backbone=dict(
        type='CADResNet', deep_stem=False, base_output_stride=32,
        mask_source=dict(type='EdgeMask', threshold=0.35, dilation=11),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50-0676ba61.pth')),
    rpn_head=dict(anchor_generator=dict(strides=[4, 8, 8, 8, 16],
                                        base_sizes=[4, 8, 16, 32, 64])),
    roi_head=dict(bbox_roi_extractor=dict(featmap_strides=[4, 8, 8, 8]),
                  mask_roi_extractor=dict(featmap_strides=[4, 8, 8, 8])),
    sparsity_loss=None)
custom_hooks = []  # no learned gate: no Gumbel temperature to schedule
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
