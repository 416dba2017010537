from .dynamic import DynamicBackboneMixin, DynamicBlockMixin, SparsitySummary
from .cad_resnet import CADResNet
from .cad_vgg import CADVGG, CellFeatures
from .d2net_vgg import D2NetVGG, caffe_preprocess
from .itd_resnet import ITDResNet, ITDResNeXt
from .las_resnet import LASBasicBlock, LASBottleneck, LASResNet
from .sar_resnet import SARResNet, parse_sar_setting
from .sfsi_resnet import SFSIBottleneck, SFSIResNet

__all__ = ['DynamicBackboneMixin', 'DynamicBlockMixin', 'SparsitySummary',
           'CADResNet', 'CADVGG', 'CellFeatures', 'D2NetVGG', 'caffe_preprocess', 'ITDResNet',
           'ITDResNeXt', 'LASBasicBlock', 'LASBottleneck', 'LASResNet', 'SARResNet',
           'parse_sar_setting', 'SFSIBottleneck', 'SFSIResNet']
