from .dynamic import DynamicBackboneMixin, DynamicBlockMixin, SparsitySummary
from .cad_resnet import CADResNet
from .cad_vgg import CADVGG, CellFeatures
from .d2net_vgg import D2NetVGG, caffe_preprocess
from .las_resnet import LASBasicBlock, LASBottleneck, LASResNet
from .sar_resnet import SARResNet, parse_sar_setting

__all__ = ['DynamicBackboneMixin', 'DynamicBlockMixin', 'SparsitySummary',
           'CADResNet', 'CADVGG', 'CellFeatures', 'D2NetVGG', 'caffe_preprocess', 'LASBasicBlock', 'LASBottleneck', 'LASResNet', 'SARResNet', 'parse_sar_setting']
