"""SIFT-keypoint masks for CAD-VGG (Hesse et al., CVPR-W 2023, Sec. 4.3, App. C.3).

A thin variant of :class:`~mmdyn.models.mask_sources.KeypointMask` for D2-Net's input
convention: the backbone gets a Caffe-preprocessed image (BGR minus the weights' mean
pixel), and the keypoints that decide the mask are usually the very keypoints that the
descriptors are sampled at, so they can be given (:meth:`set_keypoints`) instead of
detected again. One dilation per adaptive pool: the triplet ``(25, 51, 51)`` keeps
full resolution within 12 px of a keypoint at pool 1 and within 25 px at pools 2-3.
"""
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.registry import MODELS
from torch import Tensor

from .basic import blocks_any
from .keypoint_oracle import KeypointMask

#: output-stride-1 dilation triplets (pool1, pool2, pool3) whose HPatches results
#: visinf/cad's notebook stores (25-51-51 its best); App. C.3 sweeps more
PAPER_TRIPLETS = ((25, 51, 51), (19, 51, 51))


def caffe_to_grey(inputs: Tensor, mean_bgr) -> np.ndarray:
    """``[B, H, W]`` uint8 grey images from a Caffe-preprocessed batch (BGR minus the
    mean): add the mean back, round, clip, OpenCV's BGR -> grey."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or inputs.shape[1] != 3:
        raise ValueError('inputs must be a [B, 3, H, W] Caffe-preprocessed (BGR) tensor, '
                         f'got {tuple(inputs.shape) if isinstance(inputs, Tensor) else inputs}')
    bgr = inputs.detach().float().cpu() + torch.tensor(mean_bgr, dtype=torch.float32).view(1, 3, 1, 1)
    bgr = bgr.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.stack([cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY) for img in bgr])


@MODELS.register_module()
class SiftKeypointMask(KeypointMask):
    """Full resolution around SIFT keypoints, for Caffe-preprocessed inputs.

    Args:
        num_keypoints: the strongest distinct keypoints kept (512 in the paper).
        dilations: one odd square size (input pixels) per adaptive pool.
        output_stride: the fine grid's stride; None takes the backbone's.
        mean_bgr: the Caffe mean of the input; None takes the backbone's.
    """

    def __init__(self, num_keypoints: int = 512, dilations: Sequence[int] = (25, 51, 51),
                 output_stride: Optional[int] = None, mean_bgr=None):
        super().__init__(num_keypoints, dilations, output_stride=output_stride or 1)
        self.output_stride = output_stride
        if mean_bgr is not None:
            mean_bgr = tuple(float(v) for v in mean_bgr)
            if len(mean_bgr) != 3:
                raise ValueError(f'mean_bgr must have 3 values (B, G, R), got {mean_bgr}')
        self.mean_bgr = mean_bgr
        self.given = None

    def set_keypoints(self, keypoints):
        """Use these keypoints (one ``[n, 2]`` int (y, x) array per image, at the input
        resolution of the backbone) for the next forwards; None detects them again."""
        if keypoints is not None:
            keypoints = [np.asarray(k, dtype=np.int64).reshape(-1, 2) for k in keypoints]
        self.given = keypoints

    @torch.no_grad()
    def saliency(self, inputs: Tensor) -> Tensor:
        batch, _, height, width = inputs.shape
        if self.given is not None:
            if len(self.given) != batch:
                raise ValueError(f'SiftKeypointMask has keypoints for {len(self.given)} '
                                 f'images but the batch has {batch}')
            points = self.given
        else:
            if self.mean_bgr is None:
                raise ValueError('SiftKeypointMask needs mean_bgr (set by CADVGG, or pass it)')
            points = [self.keypoints(grey) for grey in caffe_to_grey(inputs, self.mean_bgr)]
        saliency = torch.zeros(batch, height, width, dtype=torch.bool)
        for b, yx in enumerate(points):
            yx = torch.from_numpy(yx)
            inside = (yx[:, 0] >= 0) & (yx[:, 0] < height) & (yx[:, 1] >= 0) & (yx[:, 1] < width)
            yx = yx[inside]
            saliency[b, yx[:, 0], yx[:, 1]] = True
        return saliency.to(inputs.device)

    @torch.no_grad()
    def forward(self, inputs, features, grids):
        if self.output_stride is None:
            raise ValueError('SiftKeypointMask.output_stride is unset (CADVGG sets it)')
        if len(self.dilations) < len(grids):
            raise ValueError(f'SiftKeypointMask has {len(self.dilations)} dilation(s) '
                             f'{self.dilations} but the backbone has {len(grids)} adaptive '
                             'downsampling steps: give one dilation per step')
        saliency = self.saliency(inputs)
        stride = self.output_stride
        dilated = {}  # triplets repeat sizes (25, 51, 51): dilate once per size
        for size in self.dilations[:len(grids)]:
            if size not in dilated:
                dilated[size] = separable_dilate(saliency, size)[:, ::stride, ::stride]
        return [blocks_any(dilated[self.dilations[step]], grid, 2 ** (step + 1))
                for step, grid in enumerate(grids)]


def separable_dilate(pixels: Tensor, size: int) -> Tensor:
    """Square dilation of a ``[B, h, w]`` bool map (a ``size x size`` max-pool, cells
    beyond the border ignored). On the CPU OpenCV's ``dilate``, whose rectangular
    kernels cost O(1) per pixel (it matters at full resolution with dilations of 51);
    elsewhere a row max then a column max (the same result at 2 / size of the square
    pool's cost)."""
    if size == 1:
        return pixels
    if pixels.device.type == 'cpu':
        kernel = np.ones((size, size), np.uint8)
        maps = pixels.numpy().astype(np.uint8)
        return torch.from_numpy(np.stack([cv2.dilate(m, kernel) for m in maps]) > 0)
    return dilate_rows_then_columns(pixels, size)


def dilate_rows_then_columns(pixels: Tensor, size: int) -> Tensor:
    """:func:`separable_dilate` in torch, on any device."""
    x = pixels.float().unsqueeze(1)
    x = F.max_pool2d(x, (size, 1), 1, (size // 2, 0))
    return F.max_pool2d(x, (1, size), 1, (0, size // 2))[:, 0] > 0.5
