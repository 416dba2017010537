# Faster R-CNN with CAD-ResNet-50 (content-adaptive downsampling, Hesse et al., CVPR-W 2023)
# and edge masks, output stride 32 -> 8. The backbone runs on the output-stride-8 grid
# (strides 1-2-1-1, dilations 1-1-2-4, contracted dilation); the downsampling steps of
# stages 3 and 4 of the strided (detection) ResNet are adaptive: a block keeps full
# resolution where the input has an edge (grey value of the normalised image, |central
# difference| >= 0.35, dilated by 11 px), every other block runs at stride 16 or 32.
# The stem is mmdet's (deep_stem=False), so the torchvision ImageNet ResNet-50 loads
# unchanged; nothing downloads: save torchvision://resnet50 as the local file below.
# Edge masks have no trainable gate: no sparsity loss and no temperature hook.
#
# Strides: the backbone's outputs are at strides 4/8/8/8 (not 4/8/16/32). The FPN keeps
# 5 levels (4, 8, 8, 8 and, from its max-pool on the last one, 16); the RPN anchors sit on
# those strides and keep the standard per-level sizes 32/64/128/256/512 (base_sizes =
# the standard strides 4..64, scales=[8]); the RoI extractor samples with the true
# strides 4/8/8/8 and still maps RoIs to levels by scale (finest_scale=56), as usual.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', '../_base_/cad_runtime.py']
model = dict(
    type='DynFasterRCNN',
    backbone=dict(
        type='CADResNet', deep_stem=False, base_output_stride=32,
        mask_source=dict(type='EdgeMask', threshold=0.35, dilation=11),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50-0676ba61.pth')),
    rpn_head=dict(anchor_generator=dict(strides=[4, 8, 8, 8, 16],
                                        base_sizes=[4, 8, 16, 32, 64])),
    roi_head=dict(bbox_roi_extractor=dict(featmap_strides=[4, 8, 8, 8])),
    sparsity_loss=None)
custom_hooks = []  # no learned gate: no Gumbel temperature to schedule
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
