"""One ``train_step`` and one ``val_step`` of a Dyn* detector and a Dyn* segmentor on
a device (``device_check``): DynFasterRCNN with LAS-ResNet-18 (the demo's model) on the
offline COCO fixture, DynEncoderDecoder (DeepLabv3, LAS-ResNet-18, light heads) on the
offline VOC fixture; the losses must be finite and include ``loss_sparsity``, val_step
must return one prediction per image with its sparsity statistics."""
import math
import os
import tempfile
from pathlib import Path

import torch

from .devices import failure, resolve_device

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
STEP_SIZE = (128, 160)  # (H, W) of the fixture images the models see
LAS_DETECTOR = CONFIGS / 'demo' / 'faster-rcnn_las-r18-s4421-t07_fpn_demo-fixture.py'
LAS_SEGMENTOR = (CONFIGS / 'las_resnet' /
                 'deeplabv3_las-r50-d8-s4444-t05_4xb4-20k_voc12aug-512x512.py')


def build_in_scope(scope: str, model_cfg, dataset_cfg):
    """The model and the dataset of one mmdet / mmseg scope."""
    from mmengine.registry import DATASETS, MODELS, DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(model_cfg), DATASETS.build(dataset_cfg)


def las_detector(root: str, size):
    """DynFasterRCNN with LAS-ResNet-18 (the demo's model) and the COCO fixture's
    train split, images resized to fit ``size``."""
    from mmengine.config import Config

    from mmdyn.datasets import build_coco_fixture
    cfg = Config.fromfile(str(LAS_DETECTOR))
    data = build_coco_fixture(os.path.join(root, 'coco'), num_shape_images=2,
                              image_size=max(size))
    dataset = dict(
        type='CocoDataset', data_root=data['root'], metainfo=cfg.metainfo,
        ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='Resize', scale=size[::-1], keep_ratio=True),
                  dict(type='PackDetInputs')])
    return build_in_scope('mmdet', cfg.model, dataset)


def las_segmentor(root: str, size):
    """DynEncoderDecoder (DeepLabv3) with LAS-ResNet-18, light heads, BatchNorm, and the
    VOC fixture's train split resized to ``size``."""
    from mmengine.config import Config

    from mmdyn.datasets import build_voc_fixture
    cfg = Config.fromfile(str(LAS_SEGMENTOR))
    cfg.model.pop('pretrained', None)
    norm = dict(type='BN', requires_grad=True)  # the config's SyncBN needs a process group
    cfg.model.backbone.update(depth=18, init_cfg=None, norm_cfg=norm)
    cfg.model.decode_head.update(in_channels=512, channels=16, norm_cfg=norm)
    cfg.model.auxiliary_head.update(in_channels=256, channels=8, norm_cfg=norm)
    cfg.model.data_preprocessor.size = tuple(size)
    data = build_voc_fixture(os.path.join(root, 'voc'), num_shape_images=2,
                             image_size=max(size))
    dataset = dict(
        type='PascalVOCDataset', data_root=data['data_root'],
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/train.txt',
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                  dict(type='Resize', scale=size[::-1], keep_ratio=False),
                  dict(type='PackSegInputs')])
    return build_in_scope('mmseg', cfg.model, dataset)


def train_and_val_step(model, data, device: torch.device, prediction_field: str) -> dict:
    """One ``train_step`` (SGD) and one ``val_step`` of ``model`` on ``device``."""
    from mmengine.optim import OptimWrapper
    model.to(device)
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    model.train()
    losses = {k: float(v.detach() if torch.is_tensor(v) else v)
              for k, v in model.train_step(data, optim_wrapper).items()}
    model.eval()
    with torch.no_grad():
        predictions = model.val_step(data)
    fields = [prediction_field in p and 'sparsity' in p.metainfo for p in predictions]
    report = dict(model=type(model).__name__, backbone=type(model.backbone).__name__,
                  loss=losses.get('loss'), loss_sparsity=losses.get('loss_sparsity'),
                  losses_finite=all(math.isfinite(v) for v in losses.values()),
                  predictions=len(predictions), prediction_field=prediction_field,
                  predictions_complete=bool(fields) and all(fields))
    problems = [text for bad, text in (
        (not report['losses_finite'], f'non-finite losses {losses}'),
        (report['loss_sparsity'] is None, 'no loss_sparsity among the losses'),
        (len(predictions) != len(data['inputs']), f'{len(predictions)} predictions for '
         f'{len(data["inputs"])} images'),
        (not report['predictions_complete'], f'predictions lack {prediction_field} or '
         'their sparsity statistics')) if bad]
    report.update(passed=not problems, failure='; '.join(problems) or None)
    return report


def check_train_and_val_steps(device, size=STEP_SIZE, batch: int = 2) -> dict:
    """``{'detector': report, 'segmentor': report}``, each from one train step and
    one val step on the same ``batch`` images of the fixture's train split (resized to
    about ``size``; the split has two, repeated for a larger batch)."""
    from mmengine.dataset import pseudo_collate
    device, reports = resolve_device(str(device)), {}
    with tempfile.TemporaryDirectory(prefix='mmdyn-check-device-') as root:
        for key, build, field in (('detector', las_detector, 'pred_instances'),
                                  ('segmentor', las_segmentor, 'pred_sem_seg')):
            try:
                torch.manual_seed(0)
                model, dataset = build(root, tuple(size))
                data = pseudo_collate([dataset[i % len(dataset)] for i in range(batch)])
                reports[key] = train_and_val_step(model, data, device, field)
            except Exception as error:  # noqa: BLE001 - reported, the other checks go on
                reports[key] = dict(passed=False, failure=failure(error))
    return reports
