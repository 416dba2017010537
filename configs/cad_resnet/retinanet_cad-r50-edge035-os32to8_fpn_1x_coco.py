# RetinaNet with CAD-ResNet-50 (content-adaptive downsampling, Hesse et al., CVPR-W 2023)
# and edge masks, output stride 32 -> 8: the backbone of
# faster-rcnn_cad-r50-edge035-os32to8_fpn_1x_coco.py (see there for the masks and the
# weights). Nothing downloads: save torchvision://resnet50 as the local file below.
# Edge masks have no trainable gate: no sparsity loss, no temperature hook.
#
# Strides: backbone outputs at 4/8/8/8. RetinaNet's FPN starts at level 1 (C3, C4, C5:
# strides 8, 8, 8) and adds two stride-2 convs on C5 (add_extra_convs='on_input'):
# levels at strides 8, 8, 8, 16, 32. The anchor generator places anchors on those
# strides; its anchor size is base_size * octave_base_scale * 2^(i/3), and base_sizes
# default to the strides, so base_sizes keep the standard 8/16/32/64/128: the five
# levels keep RetinaNet's anchor sizes 32..512 (x 2^(0, 1/3, 2/3)), level for level.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/cad_runtime.py']
model = dict(
    type='DynRetinaNet',
    backbone=dict(
        type='CADResNet', deep_stem=False, base_output_stride=32,
        mask_source=dict(type='EdgeMask', threshold=0.35, dilation=11),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50-0676ba61.pth')),
    bbox_head=dict(anchor_generator=dict(strides=[8, 8, 8, 16, 32],
                                         base_sizes=[8, 16, 32, 64, 128])),
    sparsity_loss=None)
custom_hooks = []  # no learned gate: no Gumbel temperature to schedule
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric')]
test_evaluator = val_evaluator
