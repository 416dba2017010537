# Random option fine-tuning (ROF, Sec. 3.4) for dynamic size of the 64 px digits
# ITD-ResNet-18: a random permutation of dict(kernel_size=(1, 3, 5)) at positions A-D per training
# batch, with the schedule of the stride ROF config (30 epochs, lr 0.02, cosine). Start from
# the trained classifier:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/<digits run>/epoch_8.pth
_base_ = './itd-r18-rof-stride_1xb64-30e_digits-64px.py'
custom_hooks = [dict(type='RandomOptionHook', space=dict(kernel_size=(1, 3, 5)), seed=0)]
