# As faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py, with FLOPs target t=0.4.
_base_ = './faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py'
model = dict(sparsity_loss=dict(target=0.4))
