# Faster R-CNN with SAR-ResNet-50, G4s4a2b1 (4 refinement groups, base branch at 1/4 resolution
# and 1/2 width), refinement-rate target t=0.5 (SAR Table VIII).
_base_ = ['./faster-rcnn_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py']
model = dict(backbone=dict(sar_setting='G4s4a2b1'))
