"""MMPretrain's ``ImageClassifier`` (GAP + linear head) with a dynamic backbone.

Like the Dyn* detectors: ``loss()`` adds ``loss_sparsity`` when a sparsity loss is
configured (``sparsity_loss=None`` for backbones without trainable gates, e.g.
ITD-ResNet), and ``predict()`` attaches per-image sparsity statistics (executed and
dense backbone FLOPs, per-block rates) that :class:`SparsityMetric` reports beside
mmpretrain's ``Accuracy``. Any mmdyn backbone (anything with ``sparsity_summary``)
builds inside it under ``default_scope='mmpretrain'``: mmdyn registers in mmengine's
root registries, which mmpretrain's registries fall back to.
"""
from mmengine.registry import MODELS
from mmpretrain.models.classifiers import ImageClassifier

from .sparsity_mixin import SparsityLossMixin


@MODELS.register_module()
class DynImageClassifier(SparsityLossMixin, ImageClassifier):
    """mmpretrain ``ImageClassifier`` with a dynamic backbone and ``loss_sparsity``."""
