"""Tests for mmdyn.datasets.cityscapes_fixture: layout, mmseg loading, mIoU, determinism."""
import os
import re

import cv2
import numpy as np
import pytest
import torch

from mmdyn.datasets.cityscapes_fixture import (CITIES, CITYSCAPES_CLASSES,
                                               build_cityscapes_fixture)

NUM = 2
SIZE = (128, 256)
_NAME = re.compile(r'^(?P<city>[a-z]+)_(?P<seq>\d{6})_(?P<frame>\d{6})_(?P<suffix>\w+)\.png$')


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
    return build_cityscapes_fixture(tmp_path_factory.mktemp('cityscapes'),
                                    num_images_per_split=NUM, size=SIZE)


def _read_label(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def test_classes_are_the_19_train_ids(fixture):
    from mmseg.datasets import CityscapesDataset
    assert fixture['classes'] == CITYSCAPES_CLASSES
    assert CITYSCAPES_CLASSES == CityscapesDataset.METAINFO['classes']


@pytest.mark.parametrize('split', ['train', 'val'])
def test_layout_and_file_names(fixture, split):
    root, city = fixture['root'], CITIES[split]
    images, labels = fixture[f'{split}_images'], fixture[f'{split}_labels']
    assert len(images) == len(labels) == NUM
    img_dir = os.path.join(root, 'leftImg8bit', split, city)
    seg_dir = os.path.join(root, 'gtFine', split, city)
    assert sorted(os.listdir(img_dir)) == sorted(os.path.basename(p) for p in images)
    assert sorted(os.listdir(seg_dir)) == sorted(os.path.basename(p) for p in labels)
    for img_path, seg_path in zip(images, labels):
        assert os.path.dirname(img_path) == img_dir and os.path.dirname(seg_path) == seg_dir
        img_match = _NAME.match(os.path.basename(img_path))
        seg_match = _NAME.match(os.path.basename(seg_path))
        assert img_match and seg_match
        assert img_match['suffix'] == 'leftImg8bit'
        assert seg_match['suffix'] == 'gtFine_labelTrainIds'
        for key in ('city', 'seq', 'frame'):
            assert img_match[key] == seg_match[key]
        assert img_match['city'] == city


def test_images_and_labels_content(fixture):
    present = set()
    for split in ('train', 'val'):
        for img_path, seg_path in zip(fixture[f'{split}_images'], fixture[f'{split}_labels']):
            image = cv2.imread(img_path, cv2.IMREAD_UNCHANGED)
            label = _read_label(seg_path)
            assert image.shape == SIZE + (3,) and image.dtype == np.uint8
            assert label.shape == SIZE and label.dtype == np.uint8  # single channel
            values = set(np.unique(label).tolist())
            assert values <= set(range(19)) | {255}
            assert 255 in values  # boundary band and ego vehicle are ignored
            assert (label[-1] == 255).all()  # ego-vehicle strip
            assert {0, 1, 2, 10, 11, 13} <= values, (seg_path, values)
            assert 0.05 < (label == 255).mean() < 0.5
            assert image.std() > 20  # textured, not flat
            present |= values
    assert {5, 8} <= present and ({6, 7} & present)


def test_voc_people_are_pasted():
    from mmdyn.datasets.cityscapes_fixture import _pasted_person, _voc_people
    people = _voc_people()
    assert len(people) >= 2
    for rgb, mask in people:
        assert rgb.shape[:2] == mask.shape and mask.dtype == bool and mask.any()
    image = np.zeros((100, 200, 3), np.uint8)
    label = np.full((100, 200), 255, np.uint8)
    _pasted_person(image, label, np.random.default_rng(0), 90, 100, 60, people)
    person = label == 11
    assert person.sum() > 200 and set(np.unique(label).tolist()) == {11, 255}
    assert image[person].std() > 10  # real photo pixels, not a flat colour


def _val_dataset(root):
    from mmseg.datasets import CityscapesDataset
    from mmseg.utils import register_all_modules
    register_all_modules()
    return CityscapesDataset(
        data_root=root, data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')])


def test_mmseg_cityscapes_dataset_loads(fixture):
    ds = _val_dataset(fixture['root'])
    assert len(ds) == NUM
    assert sorted(ds[i]['img_path'] for i in range(len(ds))) == sorted(fixture['val_images'])
    sample = ds[0]
    gt = sample['gt_seg_map']
    assert gt.shape == SIZE and sample['img'].shape == SIZE + (3,)
    assert 0 in gt and 10 in gt
    assert set(np.unique(gt).tolist()) <= set(range(19)) | {255}


def _miou(ds, corrupt=None):
    from mmseg.evaluation import IoUMetric
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        gt = torch.from_numpy(ds[i]['gt_seg_map'].astype(np.int64))
        pred = gt.clone() if corrupt is None else corrupt(gt.clone())
        metric.process({}, [dict(pred_sem_seg=dict(data=pred[None]),
                                 gt_sem_seg=dict(data=gt[None]))])
    return metric.compute_metrics(metric.results)['mIoU']


def test_iou_metric_perfect_then_corrupted(fixture):
    ds = _val_dataset(fixture['root'])
    assert _miou(ds) == pytest.approx(100.0)

    def sky_as_building(pred):
        pred[pred == 10] = 2
        return pred

    def shifted(pred):
        return torch.roll(pred, shifts=SIZE[1] // 8, dims=1)

    for corrupt in (sky_as_building, shifted):
        assert _miou(ds, corrupt) < 95.0


def _tree_bytes(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_deterministic(tmp_path):
    kwargs = dict(num_images_per_split=1, size=(64, 128))
    a = _tree_bytes(build_cityscapes_fixture(tmp_path / 'a', seed=3, **kwargs)['root'])
    b = _tree_bytes(build_cityscapes_fixture(tmp_path / 'b', seed=3, **kwargs)['root'])
    c = _tree_bytes(build_cityscapes_fixture(tmp_path / 'c', seed=4, **kwargs)['root'])
    assert len(a) == 4 and a == b
    assert a.keys() == c.keys() and a != c


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_images_per_split=0), 'num_images_per_split'),
    (dict(num_images_per_split=1.5), 'num_images_per_split'),
    (dict(size=(65, 130)), 'size'),
    (dict(size=(32, 64)), 'size'),
    (dict(size=(128, 128)), 'size'),
    (dict(size=(128,)), 'size'),
    (dict(size='big'), 'size'),
])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_cityscapes_fixture(tmp_path, **kwargs)
    assert not os.listdir(tmp_path)


def test_cli(tmp_path, capsys):
    from mmdyn.datasets.cityscapes_fixture import main
    main(['--out', str(tmp_path), '--num-images-per-split', '1', '--size', '64', '128'])
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and all(os.path.isdir(p) for p in printed)
    assert len(os.listdir(os.path.join(tmp_path, 'gtFine', 'val', 'frankfurt'))) == 1
