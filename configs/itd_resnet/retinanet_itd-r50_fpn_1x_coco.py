# RetinaNet with ITD-ResNet-50, nominal output sizes (see faster-rcnn_itd-r50_fpn_1x_coco.py).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/itd_runtime.py']
model = dict(
    type='DynRetinaNet',
    sparsity_loss=None,
    backbone=dict(type='ITDResNet', output_size='nominal',
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50-0676ba61.pth')))
val_evaluator = [{{_base_.val_evaluator}}, dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
