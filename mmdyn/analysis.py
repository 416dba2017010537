"""Helpers shared by the analysis tools and the demo (benchmarks, twins, FLOPs)."""
from collections import defaultdict

from mmcv.cnn import fuse_conv_bn
from mmdet.models.backbones import ResNet
from torch import nn

from mmdyn.models.backbones import LASResNet
from mmdyn.ops import fold_conv_bn


def build_las_backbone(depth: int, granularity, **kwargs) -> LASResNet:
    return LASResNet(depth=depth, granularity=granularity, init_cfg=None, **kwargs)


def build_dense_twin(las: LASResNet) -> ResNet:
    """The static mmdet ResNet with the dynamic backbone's weights, BatchNorm folded."""
    dense = ResNet(depth=las.depth, num_stages=las.num_stages, strides=las.strides,
                   dilations=las.dilations, out_indices=las.out_indices,
                   deep_stem=las.deep_stem, avg_down=las.avg_down, init_cfg=None)
    missing, unexpected = dense.load_state_dict(las.state_dict(), strict=False)
    if missing or any('masker' not in key for key in unexpected):
        raise RuntimeError(f'dense twin does not match: missing={missing}')
    dense.eval()
    return fuse_conv_bn(dense)


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


def run_stem(backbone, x):
    if backbone.deep_stem:
        x = backbone.stem(x)
    else:
        x = backbone.relu(backbone.norm1(backbone.conv1(x)))
    return backbone.maxpool(x)


def stage_flops(record, parts):
    """Per-part (stem, layer1, ...) dense and mean executed FLOPs of one forward."""
    dense, executed = defaultdict(float), defaultdict(float)
    dense['stem'] = executed['stem'] = record.stem_flops
    for block in record.blocks:
        stage = block.name.split('.')[0]
        dense[stage] += block.dense_flops
        executed[stage] += float(block.executed_flops.mean())
    return ({p: dense[p] for p in parts}, {p: executed[p] for p in parts})
