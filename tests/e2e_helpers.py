"""Shared by the slow end-to-end tests: run a tool, read its logged scalars, write a
tiny twin of a VOC segmentation config for the offline VOC 2012 fixture."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    """Run a repository script with this interpreter; return its output (must succeed)."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def logged(work_dir, key):
    """{iteration: [values]} of ``key`` from every run in ``work_dir``'s scalars.json."""
    values = {}
    for path in Path(work_dir).rglob('scalars.json'):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if key in entry:
                values.setdefault(entry['step'], []).append(entry[key])
    return values


def tiny_voc_config(path, base, data_root, backbone_args=''):
    """Write a twin of the mmseg VOC config ``base`` shrunk to ResNet-18, BN, small heads
    and 128 px crops, training 4 iterations on the fixture at ``data_root``."""
    path.write_text(f'''
_base_ = ['{base}']
data_root = '{data_root}'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None, data_preprocessor=dict(size=(128, 128)),
    backbone=dict(depth=18, norm_cfg=norm_cfg, init_cfg=None, {backbone_args}),
    decode_head=dict(in_channels=512, channels=32, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=16, norm_cfg=norm_cfg))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=(128, 128)), dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
dataset = dict(type='PascalVOCDataset', data_root=data_root,
               data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'))
train_dataloader = dict(
    _delete_=True, batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, ann_file='ImageSets/Segmentation/train.txt',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(**dataset, ann_file='ImageSets/Segmentation/val.txt',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(checkpoint=dict(interval=4), logger=dict(interval=1))
''')
    return path
