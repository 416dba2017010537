"""D2-Net's image size limits and the fit of an image to the network's stride.

D2-Net (``extract_features.py``) shrinks an image whose longer edge exceeds
``max_edge`` (1600) or whose edges sum to more than ``max_sum_edges`` (2800); the CAD
keypoint code then brings both sides to a multiple of 8 (``cv2.INTER_AREA``). Here the
fit is selectable: ``'resize'`` (CAD), ``'crop'`` (drop the last rows/columns), ``'pad'``
(zeros after the last row/column, i.e. the mean pixel after Caffe preprocessing) or
``'none'``. Keypoints found on the network image map back with :meth:`SizedImage.to_original`.
"""
from dataclasses import dataclass

import cv2
import numpy as np

FIT_MODES = ('resize', 'crop', 'pad', 'none')


@dataclass
class SizedImage:
    """The image given to the network and how its pixels relate to the original's:
    original (x, y) = network (x, y) * ``scale`` (per axis)."""
    image: np.ndarray
    scale_x: float
    scale_y: float
    valid_height: int  # rows of real image content (padding excluded)
    valid_width: int

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64).copy()
        xy[:, 0] *= self.scale_x
        xy[:, 1] *= self.scale_y
        return xy


def _limit(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}={value!r} must be a positive int or None')
    return value


def fit_image(image: np.ndarray, max_edge: int = 1600, max_sum_edges: int = 2800,
              multiple: int = 8, mode: str = 'resize') -> SizedImage:
    """Apply D2-Net's size limits, then make both sides a multiple of ``multiple``."""
    if mode not in FIT_MODES:
        raise ValueError(f'size mode={mode!r} is not one of {FIT_MODES}')
    max_edge, max_sum_edges = _limit(max_edge, 'max_edge'), _limit(max_sum_edges, 'max_sum_edges')
    multiple = _limit(multiple, 'multiple')
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f'image must be a non-empty [H, W, 3] RGB array, got {image.shape}')
    height, width = image.shape[:2]
    factor = 1.0
    if max_edge is not None and max(height, width) > max_edge:
        factor = max_edge / max(height, width)
    if max_sum_edges is not None and (height + width) * factor > max_sum_edges:
        factor = max_sum_edges / (height + width)
    new_h, new_w = max(1, int(height * factor)), max(1, int(width * factor))
    if mode == 'resize':
        new_h = max(multiple, new_h // multiple * multiple)
        new_w = max(multiple, new_w // multiple * multiple)
    work = image
    if (new_h, new_w) != (height, width):
        work = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    scale_x, scale_y = width / new_w, height / new_h
    valid_h, valid_w = work.shape[:2]
    if mode == 'crop':
        crop_h = max(multiple, valid_h // multiple * multiple)
        crop_w = max(multiple, valid_w // multiple * multiple)
        if crop_h > valid_h or crop_w > valid_w:
            raise ValueError(f'a {valid_h}x{valid_w} image is smaller than the stride '
                             f'{multiple}; use mode="pad" or "resize"')
        work = work[:crop_h, :crop_w]
        valid_h, valid_w = crop_h, crop_w
    elif mode == 'pad':
        pad_h, pad_w = -valid_h % multiple, -valid_w % multiple
        if pad_h or pad_w:
            work = np.pad(work, ((0, pad_h), (0, pad_w), (0, 0)), mode='edge')
    return SizedImage(np.ascontiguousarray(work), scale_x, scale_y, valid_h, valid_w)
