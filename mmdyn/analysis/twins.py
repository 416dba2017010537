"""Inference preparation of static networks for timing. Dynamic backbones build their
own static twin and prepare themselves (``static_twin()``, ``prepare_for_timing()``:
DESIGN contract 7, ``mmdyn.models.backbones.resnet_parts.DynamicResNetMixin``)."""
import torch
from mmcv.cnn import fuse_conv_bn
from mmdet.models.backbones import ResNet

from mmdyn.models.backbones.resnet_parts import run_stem_and_pool, run_static_layer


def prepare_dense_for_timing(backbone):
    """Eval mode, every BatchNorm folded, channels-last (its fastest CPU layout)."""
    backbone.eval()  # mmdet's ResNet.eval() returns None: do not chain
    return fuse_conv_bn(backbone).to(memory_format=torch.channels_last)


def build_dense_resnet(depth: int, **kwargs) -> ResNet:
    """A plain mmdet ResNet of ``depth`` (random weights: latency depends on shapes
    only), prepared for timing."""
    return prepare_dense_for_timing(ResNet(depth=depth, init_cfg=None, **kwargs))


class EngineForward:
    """A static mmdet ResNet run the way mmdyn runs the static parts of its dynamic
    backbones (stem and blocks BatchNorm-folded through ``FoldedConv``: the measured
    dense-convolution and product kernels, ReLUs fused): what the dynamic network's
    engine alone makes of the dense network. Returns what ``resnet(x)`` returns."""

    def __init__(self, resnet: ResNet):
        self.resnet = resnet

    @torch.no_grad()
    def __call__(self, x):
        net = self.resnet
        x = run_stem_and_pool(net, x, fold=True)
        outs = []
        for i, name in enumerate(net.res_layers):
            x = run_static_layer(getattr(net, name), x, fold=True)
            if i in net.out_indices:
                outs.append(x)
        return tuple(outs)
