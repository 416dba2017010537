"""Where content-adaptive downsampling keeps full resolution (CAD Sec. 4).

A mask source returns, for every adaptive downsampling step s = 1, 2, ..., a *keep*
mask on that step's block grid (blocks of 2^s x 2^s pixels of the output-stride-8
map): True / 1 keeps the block at full resolution, False / 0 lets it be downsampled.
Sources are registered in mmengine's MODELS registry and chosen in the config:

    backbone=dict(type='CADResNet', mask_source=dict(type='EdgeMask', threshold=0.35))

``forward(inputs, features, grids)``: ``inputs`` the normalised image batch
``[B, 3, H, W]`` (RGB), ``features`` the output of stage 2 ``[B, C, h, w]`` (the
output-stride-8 grid), ``grids`` one ``(rows, cols)`` per step.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmengine.registry import MODELS
from torch import Tensor, nn

from mmdyn.ops import gumbel_gate


def check_odd_size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f'{name}={value!r} must be an odd positive int (a centred '
                         'square dilation)')
    return value


def blocks_any(pixels: Tensor, grid, size: int) -> Tensor:
    """Block-wise OR of a ``[B, h, w]`` bool map over ``size x size`` blocks, cropped
    or padded to ``grid`` = (rows, cols)."""
    pooled = F.max_pool2d(pixels.float().unsqueeze(1), size, size, ceil_mode=True)[:, 0]
    rows, cols = grid
    pooled = F.pad(pooled, (0, max(0, cols - pooled.shape[2]), 0, max(0, rows - pooled.shape[1])))
    return pooled[:, :rows, :cols] > 0.5


def dilate(pixels: Tensor, size: int) -> Tensor:
    """Square dilation of a ``[B, h, w]`` bool map by a ``size x size`` window."""
    if size == 1:
        return pixels
    return F.max_pool2d(pixels.float().unsqueeze(1), size, 1, size // 2)[:, 0] > 0.5


def check_source_steps(source, steps: int, backbone: str):
    """Sources with one setting per adaptive step (keypoint dilations) must have one for
    each of the backbone's ``steps``: checked when the backbone is built, not at the
    first forward."""
    for module in source.modules():
        dilations = getattr(module, 'dilations', None)
        if dilations is not None and len(dilations) < steps:
            raise ValueError(f'{type(module).__name__}(dilations={tuple(dilations)}) gives '
                             f'{len(dilations)} dilation(s) but {backbone} has {steps} '
                             'adaptive steps: give one per step')


def source_keep_masks(source, external, inputs, features, grids, steps: str) -> list:
    """The keep masks of one forward: ``external`` ones when set (``set_masks``),
    otherwise ``source``'s, which must give one mask per grid (``steps`` names what the
    grids are, for the error)."""
    if external is not None:
        return external
    masks = source(inputs, features, grids)
    if len(masks) != len(grids):
        raise ValueError(f'{type(source).__name__} returned {len(masks)} masks for '
                         f'{len(grids)} {steps}')
    return masks


def build_mask_source(cfg, backbone: str) -> 'MaskSource':
    """The registered mask source of config ``cfg``; a clear error naming
    ``mask_source`` and the registered sources otherwise."""
    registered = sorted(name for name, cls in MODELS.module_dict.items()
                        if isinstance(cls, type) and issubclass(cls, MaskSource))
    kind = cfg.get('type') if isinstance(cfg, dict) else None
    if kind not in registered and not (isinstance(kind, type) and issubclass(kind, MaskSource)):
        raise ValueError(f'{backbone}: mask_source={cfg!r} must be a config dict whose type '
                         f'is one of the registered mask sources {registered}')
    return MODELS.build(cfg)


class MaskSource(nn.Module):
    """Base class; subclasses implement :meth:`forward`."""
    #: sources whose masks carry gradients (straight-through) and support one step only
    learned = False

    def forward(self, inputs: Tensor, features: Tensor, grids) -> List[Tensor]:
        raise NotImplementedError


@MODELS.register_module()
class FullResolutionMask(MaskSource):
    """Keep every block: the dilated (output stride 8) network."""

    def forward(self, inputs, features, grids):
        return [torch.ones(features.shape[0], *g, dtype=torch.bool, device=features.device)
                for g in grids]


@MODELS.register_module()
class DownsampleAllMask(MaskSource):
    """Keep no block: the strided network."""

    def forward(self, inputs, features, grids):
        return [torch.zeros(features.shape[0], *g, dtype=torch.bool, device=features.device)
                for g in grids]


@MODELS.register_module()
class RandomMask(MaskSource):
    """Each block kept with probability ``keep_ratio`` (seeded per forward call)."""

    def __init__(self, keep_ratio: float = 0.3, seed: int = 0):
        super().__init__()
        if isinstance(keep_ratio, (bool, str)) or not isinstance(keep_ratio, (int, float)) \
                or not 0.0 <= keep_ratio <= 1.0:
            raise ValueError(f'keep_ratio must be a number in [0, 1], got {keep_ratio!r}')
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f'seed={seed!r} must be an int')
        self.keep_ratio, self.seed = float(keep_ratio), int(seed)

    def forward(self, inputs, features, grids):
        generator = torch.Generator().manual_seed(self.seed)
        return [(torch.rand(features.shape[0], *g, generator=generator) < self.keep_ratio)
                .to(features.device) for g in grids]


@MODELS.register_module()
class InverseMask(MaskSource):
    """The complement of another source's masks (e.g. keep everything but edges)."""

    def __init__(self, source: dict):
        super().__init__()
        self.source = MODELS.build(source)
        if self.source.learned:
            raise ValueError('InverseMask of a learned mask is not supported')

    def forward(self, inputs, features, grids):
        return [~m.bool() for m in self.source(inputs, features, grids)]


@MODELS.register_module()
class EdgeMask(MaskSource):
    """Edges of the input keep full resolution (CAD Sec. 4.1): grey value of the
    normalised image, central differences [-1, 0, 1] in x and y, |gradient| >=
    ``threshold`` in either, a square dilation of ``dilation`` pixels, then a block is
    kept if any of its pixels is an edge pixel (at the input resolution, subsampled
    by the network's ``output_stride``, as the reference code does). The threshold is
    in units of the *normalised* image (mmseg's mean/std), as in the reference: 0.35
    is a grey-level step of about 20 on the 0-255 scale."""

    GREY = (0.299, 0.587, 0.114)

    def __init__(self, threshold: float = 0.35, dilation: int = 11,
                 output_stride: Optional[int] = 8):
        super().__init__()
        if not threshold > 0:
            raise ValueError(f'threshold must be > 0, got {threshold}')
        self.threshold = float(threshold)
        self.dilation = check_odd_size(dilation, 'dilation')
        if output_stride is not None and (isinstance(output_stride, bool) or not isinstance(
                output_stride, int) or output_stride < 1):
            raise ValueError(f'output_stride={output_stride!r} must be a positive int (the '
                             "network's output stride at the mask grid, 8), or None where "
                             'the backbone sets it (CADVGG)')
        self.output_stride = output_stride

    def edges(self, inputs: Tensor) -> Tensor:
        """``[B, H, W]`` bool edge map at the input resolution (after dilation)."""
        weights = inputs.new_tensor(self.GREY).view(1, 3, 1, 1)
        grey = (inputs[:, :3] * weights).sum(1, keepdim=True)
        kernel = inputs.new_tensor([-1.0, 0.0, 1.0])
        dx = F.conv2d(grey, kernel.view(1, 1, 1, 3), padding=(0, 1))
        dy = F.conv2d(grey, kernel.view(1, 1, 3, 1), padding=(1, 0))
        edges = ((dx.abs() >= self.threshold) | (dy.abs() >= self.threshold))[:, 0]
        return dilate(edges, self.dilation)

    def forward(self, inputs, features, grids):
        if self.output_stride is None:
            raise ValueError('EdgeMask(output_stride=None): this backbone does not set the '
                             'stride of its mask grid; give output_stride (8 for CADResNet)')
        edges = self.edges(inputs)[:, ::self.output_stride, ::self.output_stride]
        return [blocks_any(edges, grid, 2 ** (step + 1)) for step, grid in enumerate(grids)]


@MODELS.register_module()
class LearnedMask(MaskSource):
    """A shallow CNN on the stage-2 features decides per 2x2 block (CAD Sec. 4.2):
    conv3x3 (C -> 128) - ReLU - conv3x3 (-> 64) - ReLU - max-pool 2 - conv3x3 (-> 64)
    - ReLU - conv3x3 (-> 2 logits), straight-through Gumbel (index 0 = keep). One
    adaptive step only (output stride 16 -> 8). Its loss is :class:`KeepRatioLoss`."""
    learned = True

    def __init__(self, in_channels: int = 512, keep_init_bias: float = 0.0):
        super().__init__()
        self.temperature = 1.0
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True))
        # Raw parameters, so a backbone's Kaiming init of every Conv2d keeps the bias.
        self.logit_weight = nn.Parameter(torch.randn(2, 64, 3, 3) * 1e-3)
        self.logit_bias = nn.Parameter(torch.tensor([keep_init_bias, 0.0]))

    def forward(self, inputs, features, grids):
        if len(grids) != 1:
            raise ValueError('LearnedMask supports one adaptive step (output stride '
                             f'16 -> 8); this backbone has {len(grids)}')
        logits = F.conv2d(self.body(features), self.logit_weight, self.logit_bias, padding=1)
        keep = gumbel_gate(logits, self.temperature, self.training)[:, 0]
        rows, cols = grids[0]
        return [keep[:, :rows, :cols]]
