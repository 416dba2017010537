from .dynamic import DynamicBackboneMixin, DynamicBlockMixin, SparsitySummary
from .las_resnet import LASBasicBlock, LASBottleneck, LASResNet

__all__ = ['DynamicBackboneMixin', 'DynamicBlockMixin', 'SparsitySummary',
           'LASBasicBlock', 'LASBottleneck', 'LASResNet']
