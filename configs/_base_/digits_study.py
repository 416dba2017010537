# Shared by the learning-study configs (configs/learning_study/): a ResNet-18 classifier
# (mmpretrain ImageClassifier: GAP + linear head) trained from scratch on scikit-learn's
# real handwritten digits (1,797 images, 10 classes, 8x8 upsampled to 64x64; fixed
# stratified train/val/test split of 1079/359/359; mean / std from meta/info.json).
# Build the data with:
#   python -m mmdyn.datasets.digits_fixture --out data/digits-64 --size 64
# Standard ImageNet stem on the upsampled images (not a CIFAR stem): every dynamic
# backbone keeps mmdet's ResNet geometry, so 64x64 -> 16x16 at layer1, 8x8 at layer2,
# 4x4 at layer3, 2x2 at layer4; one 8x8 digit pixel is 2x2 layer1 pixels.
# Every method uses this schedule and augmentation (tools/analysis/learning_study.py).
_base_ = ['mmpretrain::_base_/models/resnet18.py', 'mmpretrain::_base_/default_runtime.py',
          './datasets/digits.py']
model = dict(
    data_preprocessor=dict(num_classes=10, mean=[79.7] * 3, std=[90.9] * 3, to_rgb=False),
    backbone=dict(init_cfg=None),
    head=dict(num_classes=10, topk=(1, )))
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4,
                                    nesterov=True), clip_grad=dict(max_norm=5.0))
max_epochs = 20
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, T_max=max_epochs - 1,
         convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                                     max_keep_ckpts=1),
                     logger=dict(type='LoggerHook', interval=17))
randomness = dict(seed=0)
