"""Write scikit-learn's real handwritten digits as an ImageNet-layout classification set.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 digits (10 classes, grey values
0..16) inside the scikit-learn wheel. They are scaled to 0..255, upsampled (bicubic) to
``size x size`` and written as grey PNGs, with a fixed stratified train / val / test
split (``seed``), in the layout mmpretrain's ``CustomDataset`` / ``ImageNet`` read::

    root/train/<class>/<index>.png     class folders '0' ... '9' (ink is bright)
    root/val/<class>/<index>.png
    root/test/<class>/<index>.png
    root/meta/{train,val,test}.txt     '<class>/<index>.png <label>' per line
    root/meta/classes.txt              one class name per line
    root/meta/info.json                split sizes, image size, per-channel mean / std

A config reads a split with ``dict(type='CustomDataset', data_root=root,
data_prefix='test', ann_file='meta/test.txt', classes='meta/classes.txt')`` (or without
``ann_file``: the class folders). Run ``python -m mmdyn.datasets.digits_fixture --out
DIR [--size 32]``. Nothing mmdet/mmseg/mmpretrain-specific is imported here.
"""
import argparse
import json
import os

import cv2
import numpy as np

SPLITS = ('train', 'val', 'test')
DIGIT_CLASSES = tuple(str(d) for d in range(10))
#: fraction of each class in the val and test splits (the rest is train)
HELD_OUT = 0.2


def split_indices(labels: np.ndarray, seed: int = 0):
    """A stratified ``{split: indices}`` split, the same for the same seed."""
    rng = np.random.default_rng(seed)
    splits = {name: [] for name in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = int(round(HELD_OUT * len(members)))
        splits['val'] += members[:n_held].tolist()
        splits['test'] += members[n_held:2 * n_held].tolist()
        splits['train'] += members[2 * n_held:].tolist()
    return {name: np.sort(np.asarray(idx)) for name, idx in splits.items()}


def upsample_digit(image8: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (0..16) as a ``size x size`` uint8 image (bicubic, clipped)."""
    grey = image8.astype(np.float32) * (255.0 / 16.0)
    big = cv2.resize(grey, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def build_digits_fixture(out: str, size: int = 32, seed: int = 0) -> dict:
    """Write the data set under ``out``; returns the contents of ``meta/info.json``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f'size={size!r} must be an int >= 8 (the digits are 8x8)')
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, labels = digits.images, digits.target
    os.makedirs(os.path.join(out, 'meta'), exist_ok=True)
    with open(os.path.join(out, 'meta', 'classes.txt'), 'w') as f:
        f.write('\n'.join(DIGIT_CLASSES) + '\n')
    counts, pixels = {}, []
    for split, indices in split_indices(labels, seed).items():
        lines = []
        for index in indices:
            label = int(labels[index])
            name = f'{DIGIT_CLASSES[label]}/{index:04d}.png'
            path = os.path.join(out, split, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image = upsample_digit(images[index], size)
            if not cv2.imwrite(path, image):
                raise OSError(f'could not write {path}')
            if split == 'train':
                pixels.append(image)
            lines.append(f'{name} {label}')
        with open(os.path.join(out, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        counts[split] = len(lines)
    train = np.stack(pixels).astype(np.float64)
    info = dict(source='sklearn.datasets.load_digits', size=size, seed=seed, counts=counts,
                classes=list(DIGIT_CLASSES), mean=[round(float(train.mean()), 3)] * 3,
                std=[round(float(train.std()), 3)] * 3)
    with open(os.path.join(out, 'meta', 'info.json'), 'w') as f:
        json.dump(info, f, indent=1)
    return info


def check_digits_root(root: str, splits=SPLITS) -> dict:
    """Raise a clear error when ``root`` is not a data set written by this module;
    returns its ``meta/info.json``."""
    info_path = os.path.join(root, 'meta', 'info.json')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'digits root {root!r} does not exist; write it with '
                                f'python -m mmdyn.datasets.digits_fixture --out {root}')
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f'digits root {root!r} has no meta/info.json: not a data set '
                                'written by mmdyn.datasets.digits_fixture')
    for split in splits:
        for required in (os.path.join(root, split), os.path.join(root, 'meta', f'{split}.txt')):
            if not os.path.exists(required):
                raise FileNotFoundError(f'digits root {root!r} lacks {required!r} (split '
                                        f'{split!r}); rebuild it with '
                                        'mmdyn.datasets.digits_fixture')
    with open(info_path) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='seed of the fixed split')
    args = parser.parse_args()
    info = build_digits_fixture(args.out, args.size, args.seed)
    print(f'digits fixture ({args.size}x{args.size}) written to {args.out}: {info["counts"]}')


if __name__ == '__main__':
    main()
