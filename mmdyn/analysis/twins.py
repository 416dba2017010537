"""Inference preparation of static networks for timing. Dynamic backbones build their
own static twin and prepare themselves (``static_twin()``, ``prepare_for_timing()``:
DESIGN contract 7, ``mmdyn.models.backbones.resnet_parts.DynamicResNetMixin``)."""
import torch
from mmcv.cnn import fuse_conv_bn
from mmdet.models.backbones import ResNet


def prepare_dense_for_timing(backbone):
    """Eval mode, every BatchNorm folded, channels-last (its fastest CPU layout)."""
    backbone.eval()  # mmdet's ResNet.eval() returns None: do not chain
    return fuse_conv_bn(backbone).to(memory_format=torch.channels_last)


def build_dense_resnet(depth: int, **kwargs) -> ResNet:
    """A plain mmdet ResNet of ``depth`` (random weights: latency depends on shapes
    only), prepared for timing."""
    return prepare_dense_for_timing(ResNet(depth=depth, init_cfg=None, **kwargs))
