from .classifier import DynImageClassifier
from .sparsity_mixin import (DynEncoderDecoder, DynFasterRCNN, DynMaskRCNN, DynRetinaNet,
                             SparsityLossMixin)

__all__ = ['SparsityLossMixin', 'DynFasterRCNN', 'DynRetinaNet', 'DynMaskRCNN',
           'DynEncoderDecoder', 'DynImageClassifier']
