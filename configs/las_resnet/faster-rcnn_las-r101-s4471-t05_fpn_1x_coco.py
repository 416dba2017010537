# FasterRCNN with LAS-ResNet-101, spatial granularity S=4-4-7-1, FLOPs target t=0.5 (LAS Table 2/3).
_base_ = './faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py'
model = dict(backbone=dict(granularity=(4, 4, 7, 1)))
