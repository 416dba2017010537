"""Static twins and inference preparation of dynamic backbones for timing."""
import torch
from mmcv.cnn import fuse_conv_bn
from mmdet.models.backbones import ResNet
from torch import nn

from mmdyn.models.backbones import LASResNet, SARResNet
from mmdyn.ops import fold_conv_bn


def build_las_backbone(depth: int, granularity, **kwargs) -> LASResNet:
    return LASResNet(depth=depth, granularity=granularity, init_cfg=None, **kwargs)


def build_dense_twin(las: LASResNet) -> ResNet:
    """The static mmdet ResNet with the dynamic backbone's weights, BatchNorm folded."""
    if las.contract_dilation and any(d > 1 for d in las.dilations):
        raise ValueError('build_dense_twin: mmdet ResNet has no contract_dilation; '
                         'compare mmseg layouts against mmseg.models.ResNetV1c instead')
    dense = ResNet(depth=las.depth, num_stages=las.num_stages, strides=las.strides,
                   dilations=las.dilations, out_indices=las.out_indices,
                   deep_stem=las.deep_stem, avg_down=las.avg_down, init_cfg=None)
    missing, unexpected = dense.load_state_dict(las.state_dict(), strict=False)
    if missing or any('masker' not in key for key in unexpected):
        raise RuntimeError(f'dense twin does not match: missing={missing}')
    return prepare_dense_for_timing(dense)


def prepare_dense_for_timing(backbone):
    """Eval mode, every BatchNorm folded, channels-last (its fastest CPU layout)."""
    backbone.eval()  # mmdet's ResNet.eval() returns None: do not chain
    return fuse_conv_bn(backbone).to(memory_format=torch.channels_last)


def prepare_sparse_for_timing(backbone):
    """Eval mode, sparse execution, stem BatchNorm folded (the blocks fold their own
    on the sparse path), channels-last."""
    backbone.eval()
    backbone.set_execution_mode('sparse')
    return fold_stem_(backbone).to(memory_format=torch.channels_last)


def fold_stem_(backbone):
    """Fold the stem's BatchNorm in place (the blocks of a dynamic backbone fold their
    own on the sparse path)."""
    if backbone.deep_stem:
        fuse_conv_bn(backbone.stem)
        return backbone
    folded = fold_conv_bn(backbone.conv1, backbone.norm1)
    backbone.conv1.weight.data = folded.weight
    backbone.conv1.bias = nn.Parameter(folded.bias)
    setattr(backbone, backbone.norm1_name, nn.Identity())
    return backbone


def build_sar_backbone(depth: int, setting: str, mask_size=(7, 7, 2), **kwargs):
    return SARResNet(depth=depth, sar_setting=setting, mask_size=tuple(mask_size),
                     init_cfg=None, **kwargs)


def prepare_sar_for_timing(sar, mode: str):
    """Eval mode in ``mode`` ('sparse' or 'masked'), every BatchNorm folded (mmcv's
    fuse_conv_bn; the refinement blocks then fold nothing more), channels-last."""
    sar.eval()
    sar.set_execution_mode(mode)
    return fuse_conv_bn(sar).to(memory_format=torch.channels_last)


def build_dense_resnet(depth: int, **kwargs) -> ResNet:
    """A plain mmdet ResNet of ``depth`` (random weights: latency depends on shapes
    only), prepared for timing."""
    return prepare_dense_for_timing(ResNet(depth=depth, init_cfg=None, **kwargs))

