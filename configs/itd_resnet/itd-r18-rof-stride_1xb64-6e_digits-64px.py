# Random option fine-tuning (ROF, Sec. 3.4) for dynamic stride of the 64 px digits
# ITD-ResNet-18 (itd-r18_1xb64-8e_digits-64px.py): every training batch runs with a random
# permutation of dict(stride=(1, 2, 3)) at positions A-D (RandomOptionHook, seeded by
# (seed, iteration)); six epochs (102 iterations) at lr 0.01, cosine. Start from the
# trained classifier:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/<digits run>/epoch_8.pth
_base_ = './itd-r18_1xb64-8e_digits-64px.py'
custom_hooks = [dict(type='RandomOptionHook', space=dict(stride=(1, 2, 3)), seed=0)]
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, T_max=6,
                        convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=6, val_interval=6)
default_hooks = dict(checkpoint=dict(interval=6))
