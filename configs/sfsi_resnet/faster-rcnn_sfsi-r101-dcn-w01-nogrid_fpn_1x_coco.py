# As faster-rcnn_sfsi-r101-dcn-w01_fpn_1x_coco.py without the grid prior (SFSI Sec. 3.3 /
# appendix Table 3: the grid prior is what keeps stochastic inference stable).
_base_ = './faster-rcnn_sfsi-r101-dcn-w01_fpn_1x_coco.py'
model = dict(backbone=dict(grid_prior_interval=None))
