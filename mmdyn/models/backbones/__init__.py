from .dynamic import DynamicBackboneMixin, DynamicBlockMixin, SparsitySummary
from .cad_resnet import CADResNet
from .itd_resnet import ITDResNet, ITDResNeXt
from .las_resnet import LASBasicBlock, LASBottleneck, LASResNet
from .sar_resnet import SARResNet, parse_sar_setting
from .sfsi_resnet import SFSIBottleneck, SFSIResNet

__all__ = ['DynamicBackboneMixin', 'DynamicBlockMixin', 'SparsitySummary',
           'CADResNet', 'ITDResNet', 'ITDResNeXt', 'LASBasicBlock', 'LASBottleneck', 'LASResNet',
           'SARResNet', 'parse_sar_setting', 'SFSIBottleneck', 'SFSIResNet']
