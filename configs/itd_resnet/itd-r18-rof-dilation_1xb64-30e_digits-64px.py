# Random option fine-tuning (ROF, Sec. 3.4) for dynamic dilation of the 64 px digits
# ITD-ResNet-18: a random permutation of dict(dilation=(1, 2, 3)) at positions A-D per training
# batch, with the schedule of the stride ROF config (30 epochs, lr 0.02, cosine). Start from
# the trained classifier:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/<digits run>/epoch_8.pth
_base_ = './itd-r18-rof-stride_1xb64-30e_digits-64px.py'
custom_hooks = [dict(type='RandomOptionHook', space=dict(dilation=(1, 2, 3)), seed=0)]
