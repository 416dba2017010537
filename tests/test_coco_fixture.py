"""Tests for mmdyn.datasets.coco_fixture: format validity, evaluation, determinism."""
import contextlib
import copy
import io
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmdyn.datasets import COCO_CATEGORY_IDS, COCO_CLASSES, build_coco_fixture

SHAPE_CLASSES = {'sports ball', 'book', 'kite'}


def _load(ann_file):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
    return build_coco_fixture(tmp_path_factory.mktemp('coco'))


def _evaluate(coco, results, iou_type):
    """COCOeval AP (IoU .50:.95) of ``results`` against ``coco``."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0]


def _perfect_results(coco, iou_type):
    results = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        result = dict(image_id=ann['image_id'], category_id=ann['category_id'], score=1.0)
        if iou_type == 'bbox':
            result['bbox'] = list(ann['bbox'])
        else:
            rle = coco.annToRLE(ann)
            result['segmentation'] = dict(size=rle['size'], counts=rle['counts'].decode()
                                          if isinstance(rle['counts'], bytes) else rle['counts'])
        results.append(result)
    return results


def test_official_coco_constants():
    assert len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == 80
    assert COCO_CLASSES[:3] == ('person', 'bicycle', 'car') and COCO_CLASSES[-1] == 'toothbrush'
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))['sports ball'] == 37


@pytest.mark.parametrize('split', ['train', 'val'])
def test_annotations_are_valid_coco(fixture, split):
    coco = _load(fixture[f'{split}_ann'])
    images, anns = coco.dataset['images'], coco.dataset['annotations']
    assert len(images) == fixture['num_images'][split]
    assert len(anns) == fixture['num_annotations'][split] > 0
    assert set(coco.dataset['info']) >= {'description', 'version', 'year', 'date_created'}
    assert coco.dataset['licenses'] == []
    cats = coco.dataset['categories']
    assert [c['id'] for c in cats] == list(COCO_CATEGORY_IDS)
    assert [c['name'] for c in cats] == list(COCO_CLASSES)
    assert all(c['supercategory'] for c in cats)
    for key in (images, anns):
        ids = [item['id'] for item in key]
        assert len(set(ids)) == len(ids) and min(ids) >= 1
    assert min(a['id'] for a in anns) == 1
    for ann in anns:
        img = coco.imgs[ann['image_id']]
        x, y, w, h = ann['bbox']
        assert all(isinstance(v, float) for v in ann['bbox'])
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= img['width'] and y + h <= img['height']
        assert ann['category_id'] in COCO_CATEGORY_IDS
        assert ann['iscrowd'] == 0 and ann['area'] > 0
        # area is the exact visible-mask pixel count: RLE matches it, polygons come close
        decoded = float(coco.annToMask(ann).sum())
        if isinstance(ann['segmentation'], dict):
            assert decoded == ann['area']
        else:
            assert abs(decoded - ann['area']) <= 0.25 * ann['area']


def test_images_on_disk_match_json(fixture):
    for split in ('train', 'val'):
        coco = _load(fixture[f'{split}_ann'])
        for img in coco.dataset['images']:
            array = cv2.imread(os.path.join(fixture[f'{split}_img_dir'], img['file_name']))
            assert array is not None
            assert array.shape == (img['height'], img['width'], 3)


def test_splits_and_classes(fixture):
    assert fixture['num_images']['val'] >= 2 and fixture['num_images']['train'] >= 2
    assert fixture['num_images']['train'] + fixture['num_images']['val'] == 12 + 2
    assert SHAPE_CLASSES <= set(fixture['classes'])
    assert list(fixture['classes']) == [c for c in COCO_CLASSES if c in fixture['classes']]
    for split in ('train', 'val'):
        coco = _load(fixture[f'{split}_ann'])
        names = {coco.cats[a['category_id']]['name'] for a in coco.dataset['annotations']}
        assert names & SHAPE_CLASSES, split


def test_voc_photo_masks_survive(fixture):
    coco = _load(fixture['train_ann'])
    voc_image_id = coco.dataset['images'][0]['id']
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[voc_image_id]))
    assert len(anns) >= 15
    names = {coco.cats[a['category_id']]['name'] for a in anns}
    assert {'person', 'bottle', 'chair', 'dining table'} <= names


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_cocoeval_perfect_then_degraded(fixture, iou_type):
    coco = _load(fixture['train_ann'])
    results = _perfect_results(coco, iou_type)
    assert _evaluate(coco, results, iou_type) == pytest.approx(1.0, abs=1e-6)

    person = dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))['person']
    persons = [i for i, r in enumerate(results) if r['category_id'] == person]
    dropped = set(persons[::2])
    assert dropped
    fewer = [r for i, r in enumerate(results) if i not in dropped]
    assert _evaluate(coco, fewer, iou_type) < 1.0

    if iou_type == 'bbox':
        shifted = copy.deepcopy(results)
        for r in shifted:
            r['bbox'][0] += r['bbox'][2] * 0.3
        assert _evaluate(coco, shifted, iou_type) < 1.0


def test_deterministic(tmp_path, fixture):
    a = build_coco_fixture(tmp_path / 'a', num_shape_images=4, image_size=128, seed=3)
    b = build_coco_fixture(tmp_path / 'b', num_shape_images=4, image_size=128, seed=3)
    c = build_coco_fixture(tmp_path / 'c', num_shape_images=4, image_size=128, seed=4)
    for key in ('train_ann', 'val_ann'):
        with open(a[key], 'rb') as fa, open(b[key], 'rb') as fb:
            assert fa.read() == fb.read()
    again = build_coco_fixture(tmp_path / 'a', num_shape_images=4, image_size=128, seed=3)
    with open(again['train_ann'], 'rb') as f1, open(b['train_ann'], 'rb') as f2:
        assert f1.read() == f2.read()

    def shape_anns(info):
        with open(info['train_ann']) as f:
            data = json.load(f)
        voc_id = data['images'][0]['id']
        return [(x['category_id'], x['bbox']) for x in data['annotations']
                if x['image_id'] != voc_id]

    assert shape_anns(a) != shape_anns(c)


def test_without_voc_photo(tmp_path):
    info = build_coco_fixture(tmp_path, num_shape_images=3, image_size=96, include_voc_photo=False)
    assert info['num_images'] == {'train': 1, 'val': 2}
    assert set(info['classes']) <= SHAPE_CLASSES


def test_visible_masks_reflect_occlusion():
    from mmdyn.datasets.coco_fixture import _shape_sample
    rng = np.random.default_rng(0)
    for _ in range(30):
        image, objects = _shape_sample(rng, np.zeros((96, 96, 3), np.uint8))
        assert 1 <= len(objects) <= 4
        stacked = np.stack([mask for _, mask in objects])
        assert stacked.sum(axis=0).max() <= 1  # visible masks are disjoint
        for name, mask in objects:
            assert name in SHAPE_CLASSES and mask.sum() >= 30
            assert len(np.unique(image[mask], axis=0)) == 1  # one colour: nothing on top


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_shape_images=1), 'num_shape_images'),
    (dict(image_size=32), 'image_size'),
])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_coco_fixture(tmp_path, **kwargs)


def test_cli(tmp_path, capsys):
    from mmdyn.datasets.coco_fixture import main
    main(['--out', str(tmp_path), '--num-shape-images', '2', '--image-size', '96'])
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and all(os.path.exists(p) for p in printed)


def test_mmdet_coco_dataset_loads(fixture):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    ds = CocoDataset(
        data_root=fixture['root'],
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        metainfo=dict(classes=fixture['classes']),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
        test_mode=False)
    assert len(ds) == fixture['num_images']['val']
    sample = ds[0]
    assert len(sample['gt_bboxes']) > 0
    assert len(sample['gt_masks']) == len(sample['gt_bboxes'])
    assert sample['img'].shape[:2] == sample['gt_masks'].masks.shape[1:]
