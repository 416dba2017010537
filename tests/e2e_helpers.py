"""Shared by the slow end-to-end tests: run a tool, read its logged scalars, write tiny
twins of the shipped configs for the offline VOC 2012 and COCO fixtures."""
import contextlib
import io
import json
import os
import random
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from mmdyn.datasets.fixture_configs import segmentation_pipelines

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    """Run a repository script with this interpreter; return its output (must succeed)."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _manager_classes(cls=None):
    """mmengine's ManagerMixin classes (loggers, message hubs, visualizers, the default
    scope): each keeps its instances by name for the life of the process."""
    from mmengine.utils import ManagerMixin
    cls = cls or ManagerMixin
    found = [cls]
    for sub in cls.__subclasses__():
        found += _manager_classes(sub)
    return found


def run_in_process(*args):
    """Run a repository script as ``python SCRIPT ARGS`` would (``__main__``, the same
    ``sys.argv``), but in this process: its output (stdout, stderr, mmengine's logger)
    is returned, an exit or error fails the test with that output. It saves the 5-8 s
    of interpreter start-up and imports a subprocess pays. For calls whose claim is
    about a config or a result, not about the command line: the first call of each
    tool in a test file stays a subprocess (:func:`run`), which is how a user calls it.

    It starts without mmengine's named instances, as a fresh process would (a
    runner's logger, message hub, visualizer and default scope; mmdet's and mmseg's
    configs name their visualizer 'visualizer', so a run would otherwise log into an
    earlier run's work dir), and afterwards the process is as before: those
    instances, the torch thread count, the random states, ``sys.argv``, ``sys.path``
    and the environment."""
    script, *argv = map(str, args)
    managers = {cls: dict(cls._instance_dict) for cls in _manager_classes()}
    for cls in managers:  # the tool starts as a fresh process would: no named instances
        cls._instance_dict.clear()  # (an earlier test's 'visualizer' would log elsewhere)
    saved_argv, saved_path, saved_env = sys.argv, list(sys.path), dict(os.environ)
    saved_threads, saved_rng = torch.get_num_threads(), (
        random.getstate(), np.random.get_state(), torch.get_rng_state())
    output = io.StringIO()
    try:
        sys.argv = [str(ROOT / script), *argv]
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(str(ROOT / script), run_name='__main__')
    except BaseException as error:  # SystemExit included: a failed run fails the test
        raise AssertionError(f'{script} {argv} failed: {error!r}\n'
                             f'{output.getvalue()[-6000:]}') from error
    finally:
        for cls in _manager_classes():
            cls._instance_dict.clear()
            cls._instance_dict.update(managers.get(cls, {}))
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
        random.setstate(saved_rng[0])
        np.random.set_state(saved_rng[1])
        torch.set_rng_state(saved_rng[2])
    return output.getvalue()


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
    and 128 px crops (the pipelines of ``--fixture voc``), training 4 iterations on the
    fixture at ``data_root``."""
    train_pipeline, test_pipeline = segmentation_pipelines((128, 128), test_scale=(160, 128))
    path.write_text(f'''
_base_ = ['{base}']
data_root = '{data_root}'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None, data_preprocessor=dict(size=(128, 128)),
    backbone=dict(depth=18, norm_cfg=norm_cfg, init_cfg=None, {backbone_args}),
    decode_head=dict(in_channels=512, channels=32, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=16, norm_cfg=norm_cfg))
train_pipeline = {train_pipeline!r}
test_pipeline = {test_pipeline!r}
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


# -- tiny segmentation configs on the offline Cityscapes fixture ------------------------

def tiny_cityscapes_config(path, base, data_root, backbone_args='', iters=2):
    """A twin of the mmseg Cityscapes config ``base`` (a path): ResNet-50 depth, BN,
    small heads, 128 x 256 crops of the fixture, ``iters`` iterations, then IoUMetric +
    SparsityMetric on the val split."""
    path.write_text(f'''
_base_ = ['{base}']
data_root = '{data_root}'
crop_size = (128, 256)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None, data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=50, norm_cfg=norm_cfg, init_cfg=None, {backbone_args}),
    decode_head=dict(channels=32, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=16, norm_cfg=norm_cfg))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(1.0, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval={iters})
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end={iters},
                        by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval={iters}), logger=dict(interval=1))
randomness = dict(seed=0)
''')
    return path



# -- tiny detection configs on the offline COCO fixture ---------------------------------

COCO_DATA = '''
data_root = '{root}'
classes = {classes!r}
metainfo = dict(classes=classes)
image_size = (160, 160)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True), batch_sampler=None,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                 ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/')))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline,
                 ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/')))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
         metric={metrics!r}),
    dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={iters},
                 val_interval={iters})
optim_wrapper = dict(optimizer=dict(lr=0.01), clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                        end={iters})]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval={iters}),
                     logger=dict(interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
'''

TWO_STAGE_MODEL = '''
num_classes = len(classes)
model = dict(
    backbone=dict({backbone}),
    neck=dict({neck}out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=128, num_classes=num_classes){mask}),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)))
'''

MASK_HEAD = ''',
        mask_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=64),
        mask_head=dict(num_convs=1, in_channels=64, conv_out_channels=32,
                       num_classes=num_classes)'''

RETINANET_MODEL = '''
model = dict(
    backbone=dict({backbone}),
    neck=dict({neck}out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=1,
                   num_classes=len(classes)),
    test_cfg=dict(nms_pre=300, max_per_img=20))
'''

# The iteration-based loop validates at max_iters whatever val_interval says.
NO_VALIDATION = '''
val_cfg = None
val_dataloader = None
val_evaluator = None
'''


def tiny_detection_config(path, base, data, backbone, neck='', iters=1, val=True):
    """Write a twin of the detection config ``base`` for the offline COCO fixture
    ``data``: 160 px images, light heads (64 channels), ``iters`` iterations; the
    backbone and neck get the extra arguments ``backbone`` / ``neck`` (config text).
    Mask heads and the segm metric when ``base`` is a Mask R-CNN config."""
    name = Path(base).name
    with_mask = name.startswith('mask-rcnn')
    if name.startswith('retinanet'):
        model = RETINANET_MODEL.format(backbone=backbone, neck=neck)
    else:
        model = TWO_STAGE_MODEL.format(backbone=backbone, neck=neck,
                                       mask=MASK_HEAD if with_mask else '')
    path.write_text(f"_base_ = ['{base}']\n" + COCO_DATA.format(
        root=data['root'].rstrip('/') + '/', classes=tuple(data['classes']),
        with_mask=with_mask, metrics=['bbox', 'segm'] if with_mask else 'bbox', iters=iters)
        + model + ('' if val else NO_VALIDATION))
    return path
