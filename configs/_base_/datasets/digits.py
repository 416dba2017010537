# scikit-learn's real handwritten digits in mmpretrain's CustomDataset layout
# (mmdyn.datasets.digits_fixture: fixed stratified train/val/test split of 1079/359/359),
# upsampled to 64x64 here; a config for another size overrides data_root and the crop:
#   python -m mmdyn.datasets.digits_fixture --out data/digits-64 --size 64
data_root = 'data/digits-64'
classes = ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=64, padding=4),
    dict(type='PackInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
dataset = dict(type='CustomDataset', data_root=data_root, classes=classes)
train_dataloader = dict(
    batch_size=64, num_workers=1, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix='train', ann_file='meta/train.txt',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=120, num_workers=1, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix='val', ann_file='meta/val.txt',
                 pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=120, num_workers=1, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix='test', ann_file='meta/test.txt',
                 pipeline=test_pipeline))
val_evaluator = [dict(type='Accuracy', topk=(1, ))]
test_evaluator = val_evaluator
