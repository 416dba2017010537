# As faster-rcnn_cad-r50-edge035-os32to8_fpn_1x_coco.py, with only stage 3's downsampling
# step adaptive (output stride 16 -> 8): stage 4 always runs at the resolution stage 3
# chose (the dilated network there). Same strides 4/8/8/8 and FPN/RPN/RoI settings.
_base_ = './faster-rcnn_cad-r50-edge035-os32to8_fpn_1x_coco.py'
model = dict(backbone=dict(base_output_stride=16))
