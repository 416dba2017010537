# ITD-ResNet-50 classifier (mmpretrain ImageClassifier: GAP + linear head) trained from
# scratch on scikit-learn's real handwritten digits (1,797 images, 10 classes, 8x8
# upsampled to 32x32; fixed stratified train/val/test split of 1079/359/359; mean / std
# from meta/info.json). Build the data with:
#   python -m mmdyn.datasets.digits_fixture --out data/digits-32 --size 32
# The network trains with the default permutation (a plain ResNet-50); the oracle tool
# (tools/analysis/itd_oracle.py) then varies stride / dilation / kernel size at positions
# A-D at inference. Standard ImageNet stem: 32x32 -> 8x8 at layer1, 1x1 at layer4.
# A digits classifier is not ImageNet: its numbers show the method works, not Table 1.
_base_ = ['mmpretrain::_base_/models/resnet50.py', 'mmpretrain::_base_/default_runtime.py',
          '../_base_/datasets/digits.py', '../_base_/itd_runtime.py']
model = dict(
    type='DynImageClassifier',
    sparsity_loss=None,
    data_preprocessor=dict(num_classes=10, mean=[79.7] * 3, std=[90.9] * 3, to_rgb=False),
    backbone=dict(type='ITDResNet', depth=50, dynamic_positions=('A', 'B', 'C', 'D'),
                  init_cfg=None),
    head=dict(num_classes=10, topk=(1, )))
data_root = 'data/digits-32'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=2),
    dict(type='PackInputs')]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
val_evaluator = [dict(type='Accuracy', topk=(1, )), dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4,
                                    nesterov=True), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, T_max=7, convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=8, val_interval=4)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=1),
                     logger=dict(type='LoggerHook', interval=5))
randomness = dict(seed=0)
