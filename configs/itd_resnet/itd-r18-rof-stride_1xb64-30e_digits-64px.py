# Random option fine-tuning (ROF, Sec. 3.4) for dynamic stride of the 64 px digits
# ITD-ResNet-18 (itd-r18_1xb64-8e_digits-64px.py): every training batch runs with a random
# permutation of dict(stride=(1, 2, 3)) at positions A-D (RandomOptionHook, seeded by
# (seed, iteration): a resumed run draws the same permutations); validation and testing use
# the default permutation. Thirty epochs (510 iterations, about 3.5 min on 2 CPU cores) at
# lr 0.02, cosine: six epochs at lr 0.01 left the training loss near 1.0 under random
# strides and the per-sample worst case at 0 % (docs/itd_resnet.md). Start from the trained
# classifier:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/<digits run>/epoch_8.pth
# The dilation and kernel-size ROF configs at 64 px inherit this schedule.
_base_ = './itd-r18_1xb64-8e_digits-64px.py'
custom_hooks = [dict(type='RandomOptionHook', space=dict(stride=(1, 2, 3)), seed=0)]
optim_wrapper = dict(optimizer=dict(lr=0.02))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, T_max=30,
                        convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=10)
default_hooks = dict(checkpoint=dict(interval=10))
