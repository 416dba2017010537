# Random option fine-tuning (ROF, Sec. 3.4) of the digits ITD-ResNet-18 for dynamic
# dilation: every training batch runs with a random permutation of dict(dilation=(1, 2, 3)) at
# positions A-D (RandomOptionHook, seeded by (seed, iteration): a resumed run draws the
# same permutations); validation and testing use the default permutation. Start from the
# trained classifier:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/<digits run>/epoch_8.pth
# One epoch (17 iterations): on the shared 2-core CPU of the measurements this is what fitted.
_base_ = './itd-r18_1xb64-8e_digits-32px.py'
custom_hooks = [dict(type='RandomOptionHook', space=dict(dilation=(1, 2, 3)), seed=0)]
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, T_max=1,
                        convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
default_hooks = dict(checkpoint=dict(interval=1))
