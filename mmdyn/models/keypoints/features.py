"""Keypoints and descriptors for an image: D2-Net (its own detections or SIFT keypoints)
and the OpenCV SIFT baseline, with one output format.

Every extractor maps an RGB ``[H, W, 3]`` uint8 image to a dict, like D2-Net's
``.d2-net`` files: ``keypoints`` ``[n, 2]`` (x, y) in the image's pixels (``[n, 3]`` with
the scale for multiscale D2-Net), ``scores`` ``[n]``, ``descriptors`` ``[n, D]``
float32 and ``macs``, the descriptor network's multiply-adds for this image.

The *SIFT-keypoint mode* is the CAD paper's (Sec. 4.3; visinf/cad ``SIFT_Detector`` and
``process_det_des``): OpenCV SIFT on the grey image, the ``num_keypoints`` strongest by
response at distinct rounded positions, the dense descriptor map sampled there, by
nearest cell (as the CAD code: ``round(y (h - 1) / (H - 1))``) or bilinearly (D2-Net's
position convention). With a :class:`~mmdyn.models.backbones.CADVGG` backbone whose
mask source is a ``SiftKeypointMask``, the same keypoints decide where it keeps full
resolution, and the descriptors are read from the active cells (no dense map).
"""
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.registry import MODELS
from torch import nn

from .detection import (bilinear_lookup, dense_lookup, detect_and_describe,
                        downscale_positions, multiscale_detect_and_describe)
from .preprocess import FIT_MODES, fit_image

DETECTORS = ('sift', 'd2net')
SAMPLINGS = ('nearest', 'bilinear')


def grey_image(image_rgb: np.ndarray) -> np.ndarray:
    """uint8 grey (0.299 R + 0.587 G + 0.114 B, OpenCV's weights)."""
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def strongest_sift(grey: np.ndarray, num_keypoints: int = 512, sift=None):
    """``(cv2 keypoints, [n, 2] int (y, x))``: the ``num_keypoints`` strongest SIFT
    keypoints by response at distinct rounded positions, strongest first. An image
    without any keypoint gives empty results."""
    sift = sift or cv2.SIFT_create()
    found = sift.detect(grey, None)
    if not found:
        return [], np.zeros((0, 2), dtype=np.int64)
    height, width = grey.shape
    response = np.array([k.response for k in found])
    points = np.array([k.pt for k in found])
    order = np.argsort(-response, kind='stable')
    xs = np.clip(np.rint(points[order, 0]), 0, width - 1).astype(np.int64)
    ys = np.clip(np.rint(points[order, 1]), 0, height - 1).astype(np.int64)
    _, first = np.unique(ys * width + xs, return_index=True)
    first = np.sort(first)[:num_keypoints]
    return [found[order[i]] for i in first], np.stack([ys[first], xs[first]], 1)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}={value!r} must be a positive int')
    return value


def empty_features(dim: int, macs: float = 0.0, with_scale: bool = False) -> dict:
    return dict(keypoints=np.zeros((0, 3 if with_scale else 2), np.float32),
                scores=np.zeros(0, np.float32), descriptors=np.zeros((0, dim), np.float32),
                macs=float(macs))


@MODELS.register_module()
class SiftFeatures(nn.Module):
    """The OpenCV SIFT baseline: the same keypoint selection as the SIFT-keypoint mode,
    SIFT's own descriptors (L2-normalised). No network: ``macs`` is 0."""

    def __init__(self, num_keypoints: int = 512):
        super().__init__()
        self.num_keypoints = _check_positive_int(num_keypoints, 'num_keypoints')

    def forward(self, image_rgb: np.ndarray) -> dict:
        sift = cv2.SIFT_create()
        keypoints, yx = strongest_sift(grey_image(image_rgb), self.num_keypoints, sift)
        if not keypoints:
            return empty_features(128)
        keypoints, descriptors = sift.compute(grey_image(image_rgb), keypoints)
        descriptors = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1,
                                                              keepdims=True), 1e-12)
        return dict(keypoints=yx[:, ::-1].astype(np.float32),
                    scores=np.array([k.response for k in keypoints], np.float32),
                    descriptors=descriptors.astype(np.float32), macs=0.0)


@MODELS.register_module()
class D2NetFeatures(nn.Module):
    """D2-Net features from a :class:`D2NetVGG` or :class:`CADVGG` backbone.

    Args:
        backbone: the backbone config.
        detector: ``'sift'`` (the CAD paper's SIFT keypoints) or ``'d2net'`` (hard
            detection, refinement, bilinear descriptors).
        num_keypoints: SIFT keypoints kept (``'sift'``).
        sampling: ``'nearest'`` (CAD) or ``'bilinear'`` (``'sift'`` mode).
        normalize: L2-normalise the sampled descriptors (``'sift'`` mode; D2-Net's
            detector always does).
        scales: image pyramid of the ``'d2net'`` detector; ``(1,)`` is single scale,
            D2-Net's multiscale is ``(0.5, 1, 2)``.
        edge_threshold: Hessian edge test (5).
        max_edge, max_sum_edges, size_mode: D2-Net's size limits and the fit to a
            multiple of 8 (:func:`~mmdyn.models.keypoints.preprocess.fit_image`).
    """

    def __init__(self, backbone=dict(type='D2NetVGG', output_stride=4), detector: str = 'sift',
                 num_keypoints: int = 512, sampling: str = 'nearest', normalize: bool = True,
                 scales: Sequence[float] = (1,), edge_threshold: float = 5.0,
                 max_edge: int = 1600, max_sum_edges: int = 2800, size_mode: str = 'resize'):
        super().__init__()
        if detector not in DETECTORS:
            raise ValueError(f'detector={detector!r} is not one of {DETECTORS}')
        if sampling not in SAMPLINGS:
            raise ValueError(f'sampling={sampling!r} is not one of {SAMPLINGS}')
        if size_mode not in FIT_MODES:
            raise ValueError(f'size_mode={size_mode!r} is not one of {FIT_MODES}')
        scales = tuple(float(s) for s in scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f'scales={scales} must be positive numbers')
        self.backbone = MODELS.build(backbone) if isinstance(backbone, dict) else backbone
        self.detector, self.sampling, self.normalize = detector, sampling, bool(normalize)
        self.num_keypoints = _check_positive_int(num_keypoints, 'num_keypoints')
        self.scales, self.edge_threshold = scales, float(edge_threshold)
        self.max_edge, self.max_sum_edges, self.size_mode = max_edge, max_sum_edges, size_mode
        self.pool_steps = self.backbone.kept_pools
        self.eval()

    # -- backbone access ----------------------------------------------------------------

    def _run(self, x):
        """``(features, lookup, (h, w), macs)`` of one forward."""
        backbone = self.backbone
        if hasattr(backbone, 'extract'):
            features = backbone.extract(x)
            macs = float(backbone.records.executed_flops[0])
        else:
            with torch.no_grad():
                features = backbone(x)[0]
            macs = backbone.macs(*x.shape[2:])
        if isinstance(features, torch.Tensor):
            return features, dense_lookup(features[0]), tuple(features.shape[2:]), macs
        return features, (lambda ij: features.lookup(0, ij)), tuple(features.shape[2:]), macs

    def _mask_sources(self):
        source = getattr(self.backbone, 'mask_source', None)
        return [m for m in source.modules() if hasattr(m, 'set_keypoints')] if source else []

    # -- extraction ---------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, image_rgb: np.ndarray) -> dict:
        sized = fit_image(image_rgb, self.max_edge, self.max_sum_edges, 8, self.size_mode)
        from mmdyn.models.backbones.d2net_vgg import caffe_preprocess  # (import cycle)
        x = caffe_preprocess(sized.image, self.backbone.mean_bgr)
        dim = self.backbone.conv4_3.out_channels
        if self.detector == 'sift':
            return self._sift_mode(sized, x, dim)
        return self._d2net_mode(sized, x, dim)

    def _sift_mode(self, sized, x, dim):
        grey = grey_image(sized.image)[:sized.valid_height, :sized.valid_width]
        cv_keypoints, yx = strongest_sift(grey, self.num_keypoints)
        for source in self._mask_sources():
            source.set_keypoints([yx])
        try:
            features, lookup, (h, w), macs = self._run(x)
        finally:
            for source in self._mask_sources():
                source.set_keypoints(None)
        if len(yx) == 0:
            return empty_features(dim, macs)
        height, width = x.shape[2:]
        ij = torch.from_numpy(yx).float()
        if self.sampling == 'nearest':
            scale = torch.tensor([(h - 1) / max(height - 1, 1), (w - 1) / max(width - 1, 1)])
            cells = (ij * scale).round().long()
            cells = torch.stack([cells[:, 0].clamp(0, h - 1), cells[:, 1].clamp(0, w - 1)], 1)
            descriptors = lookup(cells)
        else:
            descriptors, _ = bilinear_lookup(lookup, (h, w),
                                             downscale_positions(ij, self.pool_steps), clamp=True)
        if self.normalize:
            descriptors = F.normalize(descriptors, dim=1)
        return dict(keypoints=sized.to_original(yx[:, ::-1]).astype(np.float32),
                    scores=np.array([k.response for k in cv_keypoints], np.float32),
                    descriptors=descriptors.cpu().numpy().astype(np.float32), macs=macs)

    def _d2net_mode(self, sized, x, dim):
        total = []

        def dense(level):
            features, _, _, macs = self._run(level)
            total.append(macs)
            return features.dense()[0] if hasattr(features, 'dense') else features[0]

        if self.scales == (1.0,):
            ij, scores, descriptors = detect_and_describe(dense(x), self.pool_steps,
                                                          self.edge_threshold)
            scale = None
        else:
            kps, scores, descriptors = multiscale_detect_and_describe(
                x, dense, self.pool_steps, self.scales, self.edge_threshold)
            ij, scale = kps[:, :2], kps[:, 2:]
        inside = (ij[:, 0] < sized.valid_height) & (ij[:, 1] < sized.valid_width)
        ij, scores, descriptors = ij[inside], scores[inside], descriptors[inside]
        xy = sized.to_original(ij.flip(1).cpu().numpy())
        if scale is not None:
            xy = np.concatenate([xy, scale[inside].cpu().numpy()], 1)
        return dict(keypoints=xy.astype(np.float32), scores=scores.cpu().numpy(),
                    descriptors=descriptors.cpu().numpy().astype(np.float32),
                    macs=float(sum(total)))
