# As deeplabv3_sfsi-r50-d8-w005_4xb2-80k_cityscapes-512x1024.py with sparse loss weight 0.2 (one point of the paper's sweep).
_base_ = './deeplabv3_sfsi-r50-d8-w005_4xb2-80k_cityscapes-512x1024.py'
model = dict(sparsity_loss=dict(loss_weight=0.2))
