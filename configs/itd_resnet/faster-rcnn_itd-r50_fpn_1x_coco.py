# Faster R-CNN with ITD-ResNet-50 (positions A-D dynamic). Anchor generators and RoI
# extractors assume the nominal strides 4/8/16/32, so the backbone resamples every output to
# the size the default permutation gives (output_size='nominal': bilinear upsampling where a stage
# ran coarser, adaptive average pooling where it ran finer). The default permutation is mmdet's
# ResNet-50: the mmdet Faster R-CNN R50 checkpoint loads unchanged (evaluate it as is, or
# under other permutations with tools/analysis/itd_oracle.py once per-image AP exists; see
# docs/itd_resnet.md). Offline: point init_cfg.checkpoint at a local ImageNet ResNet-50.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', '../_base_/itd_runtime.py']
model = dict(
    type='DynFasterRCNN',
    sparsity_loss=None,
    backbone=dict(type='ITDResNet', output_size='nominal',
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50-0676ba61.pth')))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
