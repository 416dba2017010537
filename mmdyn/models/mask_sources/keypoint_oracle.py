"""Keypoint and oracle mask sources for CAD-ResNet (Hesse et al., CVPR-W 2023).

``KeypointMask`` keeps full resolution around SIFT keypoints of the input image (the
paper's keypoint experiments; cf. visinf/cad ``keypoints/d2-net/lib/ap_utils.py``,
``create_pooling_mask``: the keypoint saliency map is dilated with a ``dils[i] x
dils[i]`` ones kernel per pooling level, subsampled to the network's output stride and
a block keeps full resolution if any of its pixels is set).

``OracleMask`` serves precomputed keep maps, e.g. from :func:`oracle_keep_map`: the
pixels that the coarse (strided) model gets wrong and the fine (dilated) model right.

Both follow :class:`~mmdyn.models.mask_sources.MaskSource`: ``forward(inputs, features,
grids)`` returns one bool keep mask ``[B, rows, cols]`` per adaptive step.
"""
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from mmengine.registry import MODELS
from torch import Tensor

from .basic import MaskSource, blocks_any, check_odd_size, dilate

__all__ = ['KeypointMask', 'OracleMask', 'oracle_keep_map', 'denormalize_to_grey']

#: mmseg / mmdet data-preprocessor normalisation (RGB order, bgr_to_rgb=True)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _check_triple(value, name: str):
    try:
        value = tuple(float(v) for v in value)
    except TypeError:
        raise TypeError(f'{name} must be a sequence of 3 numbers (RGB), got {value!r}')
    if len(value) != 3:
        raise ValueError(f'{name} must have 3 values (RGB), got {len(value)}')
    return value


def _check_output_stride(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'output_stride={value!r} must be a positive int')
    return value


def denormalize_to_grey(inputs: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """``[B, H, W]`` uint8 greyscale images from a normalised RGB batch
    ``[B, 3(+), H, W]``: undo ``(x - mean) / std``, round and clip to 0..255, then
    OpenCV's RGB -> grey conversion."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or inputs.shape[1] < 3:
        raise ValueError('inputs must be a [B, 3, H, W] tensor (normalised RGB), got '
                         f'{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs)}')
    rgb = inputs[:, :3].detach().float().cpu()
    rgb = rgb * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    rgb = rgb.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.stack([cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
                     for img in rgb])


@MODELS.register_module()
class KeypointMask(MaskSource):
    """Full resolution around SIFT keypoints.

    Per image: OpenCV SIFT on the uint8 greyscale image, the ``num_keypoints``
    strongest keypoints (by response) at distinct rounded pixel positions are set in a
    binary saliency map at input resolution. For adaptive step s the map is dilated by
    a ``dilations[s-1]`` square, subsampled by ``output_stride`` and a 2^s x 2^s block
    of the output-stride-8 grid is kept if any of its pixels is set.

    Args:
        num_keypoints: how many keypoints (positive int).
        dilations: one odd positive square size (pixels, input resolution) per
            adaptive step; the CAD paper uses larger ones for later steps.
        output_stride: the stride of the grid the keep masks live on (8).
        mean, std: the data preprocessor's normalisation (RGB order).
    """

    def __init__(self, num_keypoints: int = 512, dilations: Sequence[int] = (25, 51),
                 output_stride: int = 8, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        if isinstance(num_keypoints, bool) or not isinstance(num_keypoints, int) \
                or num_keypoints < 1:
            raise ValueError(f'num_keypoints={num_keypoints!r} must be a positive int')
        if not isinstance(dilations, (list, tuple)) or len(dilations) == 0:
            raise ValueError(f'dilations={dilations!r} must be a non-empty list or tuple '
                             'of odd positive ints (one per adaptive step)')
        self.num_keypoints = num_keypoints
        self.dilations = tuple(check_odd_size(d, f'dilations[{i}]')
                               for i, d in enumerate(dilations))
        self.output_stride = _check_output_stride(output_stride)
        self.mean = _check_triple(mean, 'mean')
        self.std = _check_triple(std, 'std')
        if any(s == 0 for s in self.std):
            raise ValueError(f'std must be non-zero, got {self.std}')
        self._sift = None

    @property
    def sift(self):
        if self._sift is None:
            self._sift = cv2.SIFT_create()
        return self._sift

    def __getstate__(self):  # cv2 objects do not pickle / deepcopy
        state = self.__dict__.copy()
        state['_sift'] = None
        return state

    def keypoints(self, grey: np.ndarray) -> np.ndarray:
        """``[n, 2]`` (y, x) int positions of the strongest distinct keypoints of one
        uint8 greyscale image, strongest first (n <= ``num_keypoints``)."""
        height, width = grey.shape
        found = self.sift.detect(grey, None)
        if not found:
            return np.zeros((0, 2), dtype=np.int64)
        response = np.array([k.response for k in found], dtype=np.float64)
        points = np.array([k.pt for k in found], dtype=np.float64)  # (x, y)
        order = np.argsort(-response, kind='stable')
        xs = np.clip(np.rint(points[order, 0]), 0, width - 1).astype(np.int64)
        ys = np.clip(np.rint(points[order, 1]), 0, height - 1).astype(np.int64)
        # First occurrence of every distinct position, in response order.
        _, first = np.unique(ys * width + xs, return_index=True)
        first = np.sort(first)[:self.num_keypoints]
        return np.stack([ys[first], xs[first]], 1)

    @torch.no_grad()
    def saliency(self, inputs: Tensor) -> Tensor:
        """``[B, H, W]`` bool keypoint map at input resolution (undilated)."""
        greys = denormalize_to_grey(inputs, self.mean, self.std)
        saliency = torch.zeros(greys.shape, dtype=torch.bool)
        for b, grey in enumerate(greys):
            points = torch.from_numpy(self.keypoints(grey))
            saliency[b, points[:, 0], points[:, 1]] = True
        return saliency.to(inputs.device)

    @torch.no_grad()
    def forward(self, inputs, features, grids):
        if len(self.dilations) < len(grids):
            raise ValueError(f'KeypointMask has {len(self.dilations)} dilation(s) '
                             f'{self.dilations} but the backbone has {len(grids)} adaptive '
                             'downsampling steps: give one dilation per step')
        saliency = self.saliency(inputs)
        stride = self.output_stride
        return [blocks_any(dilate(saliency, self.dilations[step])[:, ::stride, ::stride],
                           grid, 2 ** (step + 1))
                for step, grid in enumerate(grids)]


def _check_label_map(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f'{name} must be a tensor, got {type(x).__name__}')
    if x.dim() != 3:
        raise ValueError(f'{name} must be a [B, H, W] label map, got shape {tuple(x.shape)}')
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f'{name} must hold integer class indices, got {x.dtype} (use '
                        'argmax over the class dimension of the logits)')
    return x


def oracle_keep_map(coarse_pred: Tensor, fine_pred: Tensor, gt: Tensor,
                    ignore_index: Optional[int] = 255, dilation: int = 1) -> Tensor:
    """``[B, H, W]`` bool: the pixels where the coarse model is wrong and the fine model
    right (``coarse != gt`` and ``fine == gt``, pixels labelled ``ignore_index``
    excluded), square-dilated by ``dilation`` (odd positive) pixels.

    All three are integer label maps ``[B, H, W]`` of the same shape."""
    coarse = _check_label_map(coarse_pred, 'coarse_pred')
    fine = _check_label_map(fine_pred, 'fine_pred')
    gt = _check_label_map(gt, 'gt')
    if not coarse.shape == fine.shape == gt.shape:
        raise ValueError('coarse_pred, fine_pred and gt must have the same shape, got '
                         f'{tuple(coarse.shape)}, {tuple(fine.shape)}, {tuple(gt.shape)}')
    dilation = check_odd_size(dilation, 'dilation')
    keep = (coarse != gt) & (fine == gt)
    if ignore_index is not None:
        keep &= gt != ignore_index
    return dilate(keep, dilation)


@MODELS.register_module()
class OracleMask(MaskSource):
    """Serves precomputed keep maps (e.g. :func:`oracle_keep_map`), set before each
    forward with :meth:`set_keep_maps` (bool ``[B, H, W]`` at the backbone's input
    resolution, i.e. after padding). Like ``EdgeMask``: square dilation of ``dilation``
    pixels, subsampled by ``output_stride``, a block kept if any of its pixels is set.
    The maps stay in use until replaced or cleared with ``set_keep_maps(None)``."""

    def __init__(self, dilation: int = 1, output_stride: int = 8):
        super().__init__()
        self.dilation = check_odd_size(dilation, 'dilation')
        self.output_stride = _check_output_stride(output_stride)
        self.keep_maps = None

    def set_keep_maps(self, maps: Optional[Tensor]):
        if maps is None:
            self.keep_maps = None
            return
        if not isinstance(maps, Tensor):
            raise TypeError(f'keep maps must be a tensor, got {type(maps).__name__}')
        if maps.dim() == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.dim() != 3:
            raise ValueError('keep maps must have shape [B, H, W] (input resolution), '
                             f'got {tuple(maps.shape)}')
        if maps.dtype != torch.bool:
            if maps.dtype.is_complex or not (maps.dtype.is_floating_point or maps.dtype in (
                    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
                raise TypeError(f'keep maps must be bool (or 0/1 numbers), got {maps.dtype}')
            if not bool(((maps == 0) | (maps == 1)).all()):
                raise ValueError('keep maps must be bool or hold only 0 and 1')
            maps = maps > 0.5
        self.keep_maps = maps.detach()

    @torch.no_grad()
    def forward(self, inputs, features, grids):
        maps = self.keep_maps
        if maps is None:
            raise RuntimeError('OracleMask has no keep maps: call '
                               'mask_source.set_keep_maps(maps) with bool [B, H, W] maps '
                               '(e.g. from oracle_keep_map) before the forward, or give the '
                               'block masks directly with CADResNet.set_masks(...)')
        batch, height, width = inputs.shape[0], inputs.shape[2], inputs.shape[3]
        if tuple(maps.shape) != (batch, height, width):
            raise ValueError(f'OracleMask keep maps have shape {tuple(maps.shape)}, but the '
                             f'input batch needs {(batch, height, width)} ([B, H, W] at the '
                             'backbone input resolution, after padding)')
        maps = dilate(maps.to(inputs.device), self.dilation)
        stride = self.output_stride
        maps = maps[:, ::stride, ::stride]
        return [blocks_any(maps, grid, 2 ** (step + 1)) for step, grid in enumerate(grids)]
