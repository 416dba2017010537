# As faster-rcnn_sfsi-r101-dcn-w005_fpn_1x_coco.py with sparse loss weight 0.1 (one point of the paper's sweep).
_base_ = './faster-rcnn_sfsi-r101-dcn-w005_fpn_1x_coco.py'
model = dict(sparsity_loss=dict(loss_weight=0.1))
