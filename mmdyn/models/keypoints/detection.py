"""D2-Net's test-time detection and description (Dusmanu et al., CVPR 2019, Sec. 3.2
and the released ``lib/model_test.py``, ``lib/pyramid.py``, ``lib/utils.py``).

* hard detection (Eq. 1): a point (c, i, j) of the ``[C, h, w]`` map is detected when
  it is the channel-wise maximum at (i, j), a 3x3 local maximum of channel c, and
  passes the Hessian edge test ``tr^2 / det <= (r + 1)^2 / r`` with ``det > 0``
  (``r = edge_threshold = 5``), finite differences as in SIFT;
* sub-pixel refinement: one Newton step ``-H^-1 g``, rejecting shifts >= 0.5;
* descriptors: bilinear interpolation of the dense map at the refined position (all
  four corners inside), L2-normalised;
* positions back to input pixels with ``p -> 2 p + 0.5`` per pooling step;
* multiscale (``process_multiscale``): an image pyramid (0.5, 1, 2), features summed
  coarse to fine, detections of coarser scales banned at finer ones, score =
  activation / (scale index + 1).
"""
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: 3x3 finite differences: second derivatives along rows (i), columns (j), mixed
DII = torch.tensor([[0., 1., 0.], [0., -2., 0.], [0., 1., 0.]])
DJJ = torch.tensor([[0., 0., 0.], [1., -2., 1.], [0., 0., 0.]])
DIJ = 0.25 * torch.tensor([[1., 0., -1.], [0., 0., 0.], [-1., 0., 1.]])


def _neighbourhoods(features: Tensor, points: Tensor) -> Tensor:
    """``[n, 3, 3]`` values around ``points`` ``[n, 3]`` (c, i, j) of a ``[C, h, w]``
    map, zero outside (the zero padding of D2-Net's convolutions)."""
    padded = F.pad(features, (1, 1, 1, 1))
    c, i, j = points.unbind(1)
    offsets = torch.arange(3, device=features.device)
    rows = (i[:, None] + offsets)[:, :, None].expand(-1, 3, 3)
    cols = (j[:, None] + offsets)[:, None, :].expand(-1, 3, 3)
    return padded[c[:, None, None].expand(-1, 3, 3), rows, cols]


def _hessian(patch: Tensor):
    dii = (patch * DII.to(patch)).sum((1, 2))
    djj = (patch * DJJ.to(patch)).sum((1, 2))
    dij = (patch * DIJ.to(patch)).sum((1, 2))
    return dii, djj, dij


def hard_detection(features: Tensor, edge_threshold: float = 5.0) -> Tensor:
    """``[n, 3]`` (c, i, j) detections of one ``[C, h, w]`` map (Eq. 1 plus the edge
    test), in row-major order of (c, i, j)."""
    if features.dim() != 3:
        raise ValueError(f'features must be [C, h, w], got {tuple(features.shape)}')
    if not edge_threshold > 0:
        raise ValueError(f'edge_threshold must be > 0, got {edge_threshold}')
    depth_max = features.max(0, keepdim=True)[0]
    local_max = F.max_pool2d(features[None], 3, stride=1, padding=1)[0]
    candidates = torch.nonzero((features == depth_max) & (features == local_max))
    if candidates.numel() == 0:
        return candidates
    dii, djj, dij = _hessian(_neighbourhoods(features, candidates))
    det, trace = dii * djj - dij * dij, dii + djj
    limit = (edge_threshold + 1) ** 2 / edge_threshold
    not_edge = (trace * trace / det <= limit) & (det > 0)
    return candidates[not_edge]


def refine_positions(features: Tensor, points: Tensor):
    """Sub-pixel refinement of detections ``[n, 3]``: ``(points kept, [m, 2] refined
    (i, j) on the map)``; shifts of 0.5 or more in either axis are rejected."""
    patch = _neighbourhoods(features, points)
    dii, djj, dij = _hessian(patch)
    di = 0.5 * (patch[:, 2, 1] - patch[:, 0, 1])
    dj = 0.5 * (patch[:, 1, 2] - patch[:, 1, 0])
    det = dii * djj - dij * dij
    step_i = -(djj * di - dij * dj) / det
    step_j = -(-dij * di + dii * dj) / det
    keep = (step_i.abs() < 0.5) & (step_j.abs() < 0.5)
    refined = points[keep, 1:].float() + torch.stack([step_i[keep], step_j[keep]], 1)
    return points[keep], refined


def bilinear_lookup(lookup: Callable, size, ij: Tensor, clamp: bool = False):
    """Bilinear interpolation of a map known through ``lookup([n, 2] int (i, j)) ->
    [n, C]`` (a dense map or CAD cells). Returns ``(values [m, C], kept index [m])``:
    points with a corner outside the ``size`` = (h, w) map are dropped as in D2-Net,
    or clamped onto the map with ``clamp=True``."""
    height, width = size
    ij = ij.float()
    if clamp:
        ij = torch.stack([ij[:, 0].clamp(0, height - 1), ij[:, 1].clamp(0, width - 1)], 1)
    top, left = ij.floor().long().unbind(1)
    bottom, right = ij.ceil().long().unbind(1)
    inside = (top >= 0) & (left >= 0) & (bottom < height) & (right < width)
    index = inside.nonzero()[:, 0]
    top, left, bottom, right, ij = top[index], left[index], bottom[index], right[index], ij[index]
    di, dj = (ij[:, 0] - top.float())[:, None], (ij[:, 1] - left.float())[:, None]
    value = ((1 - di) * (1 - dj) * lookup(torch.stack([top, left], 1))
             + (1 - di) * dj * lookup(torch.stack([top, right], 1))
             + di * (1 - dj) * lookup(torch.stack([bottom, left], 1))
             + di * dj * lookup(torch.stack([bottom, right], 1)))
    return value, index


def dense_lookup(features: Tensor) -> Callable:
    """``lookup`` for a dense ``[C, h, w]`` map."""
    return lambda ij: features[:, ij[:, 0], ij[:, 1]].t()


def upscale_positions(ij: Tensor, steps: int) -> Tensor:
    """Map positions to input pixels: ``p -> 2 p + 0.5`` per pooling step."""
    for _ in range(steps):
        ij = ij * 2 + 0.5
    return ij


def downscale_positions(ij: Tensor, steps: int) -> Tensor:
    for _ in range(steps):
        ij = (ij - 0.5) / 2
    return ij


def describe_detections(features: Tensor, points: Tensor, pool_steps: int):
    """Refine detections ``[n, 3]`` (c, i, j) of a ``[C, h, w]`` map and describe them:
    ``(keypoints [m, 2] (i, j) in the network's input pixels, scores [m], descriptors
    [m, C] L2-normalised)``."""
    points, refined = refine_positions(features, points)
    descriptors, kept = bilinear_lookup(dense_lookup(features), features.shape[1:], refined)
    points, refined = points[kept], refined[kept]
    scores = features[points[:, 0], points[:, 1], points[:, 2]]
    return upscale_positions(refined, pool_steps), scores, F.normalize(descriptors, dim=1)


def detect_and_describe(features: Tensor, pool_steps: int, edge_threshold: float = 5.0):
    """Single-scale D2-Net on one ``[C, h, w]`` map (see :func:`describe_detections`)."""
    return describe_detections(features, hard_detection(features, edge_threshold), pool_steps)


def multiscale_detect_and_describe(image: Tensor, dense_features: Callable, pool_steps: int,
                                   scales: Sequence[float] = (0.5, 1, 2),
                                   edge_threshold: float = 5.0):
    """D2-Net's ``process_multiscale`` for one Caffe-preprocessed ``[1, 3, H, W]`` image.
    ``dense_features(image) -> [C, h, w]``. Returns ``(keypoints [n, 3] (i, j, 1/scale)
    in input pixels, scores [n], descriptors [n, C])``."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f'image must be [1, 3, H, W], got {tuple(image.shape)}')
    height, width = image.shape[2:]
    keypoints, scores, descriptors = [], [], []
    previous = banned = None
    for index, scale in enumerate(scales):
        level = F.interpolate(image, scale_factor=scale, mode='bilinear', align_corners=True)
        level_h, level_w = level.shape[2:]
        features = dense_features(level)
        if previous is not None:
            features = features + F.interpolate(previous[None], size=features.shape[1:],
                                                mode='bilinear', align_corners=True)[0]
        if banned is not None:
            banned = F.interpolate(banned[None, None].float(), size=features.shape[1:])[0, 0] > 0.5
        points = hard_detection(features, edge_threshold)
        if banned is not None and points.numel():
            points = points[~banned[points[:, 1], points[:, 2]]]
        detected = torch.zeros(features.shape[1:], dtype=torch.bool, device=features.device)
        detected[points[:, 1], points[:, 2]] = True
        banned = detected if banned is None else banned | detected
        kp, sc, de = describe_detections(features, points, pool_steps)
        kp = kp * kp.new_tensor([height / level_h, width / level_w])
        keypoints.append(torch.cat([kp, kp.new_full((kp.shape[0], 1), 1 / scale)], 1))
        scores.append(sc / (index + 1))
        descriptors.append(de)
        previous = features
    return torch.cat(keypoints), torch.cat(scores), torch.cat(descriptors)
