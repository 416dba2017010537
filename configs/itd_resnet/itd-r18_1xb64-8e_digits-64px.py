# As itd-r18_1xb64-8e_digits-32px.py on the digits upsampled to 64x64 (layer1 16x16 ...
# layer4 2x2 under the default permutation), so that stride permutations keep more than
# a 1x1 map. Build the data with:
#   python -m mmdyn.datasets.digits_fixture --out data/digits-64 --size 64
_base_ = './itd-r18_1xb64-8e_digits-32px.py'
data_root = 'data/digits-64'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=64, padding=4),
    dict(type='PackInputs')]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
