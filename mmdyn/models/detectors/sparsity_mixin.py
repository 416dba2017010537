"""Thin detector/segmentor subclasses that add the backbone's sparsity loss.

The backbone keeps returning plain feature tuples (DESIGN contract 1); the mixin reads
its records after the forward. ``loss()`` adds ``loss_sparsity`` (mmengine sums every
key containing "loss"); ``predict()`` attaches per-image sparsity statistics to each
data sample's metainfo under ``'sparsity'``, where :class:`SparsityMetric` finds them.
"""
from mmdet.models.detectors import FasterRCNN, MaskRCNN, RetinaNet
from mmengine.registry import MODELS
from mmseg.models.segmentors import EncoderDecoder


class SparsityLossMixin:
    """Put before the mmdet/mmseg model class in the bases."""

    def __init__(self, *args, sparsity_loss=dict(type='FlopsRatioLoss'), **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.backbone, 'sparsity_summary'):
            raise TypeError(f'{type(self).__name__} needs a dynamic backbone (e.g. '
                            f'LASResNet); got {type(self.backbone).__name__}')
        # None: a backbone without trainable gates (e.g. CAD-ResNet with edge masks);
        # predictions still carry their sparsity statistics.
        self.sparsity_loss = None if sparsity_loss is None else MODELS.build(sparsity_loss)

    def _scheduled_loss(self):
        if self.sparsity_loss is None:
            raise TypeError(f'{type(self).__name__} has sparsity_loss=None: there is no '
                            'target to schedule (remove SparsityTargetHook)')
        return self.sparsity_loss

    def set_sparsity_target(self, target: float):
        self._scheduled_loss().set_target(target)

    def set_sparsity_progress(self, progress: float):
        self._scheduled_loss().set_progress(progress)

    def loss(self, inputs, data_samples):
        losses = super().loss(inputs, data_samples)
        if self.sparsity_loss is not None:
            losses.update(self.sparsity_loss(self.backbone.records))
        return losses

    def predict(self, inputs, data_samples=None, **kwargs):
        with self.backbone.accumulate_records():
            results = super().predict(inputs, data_samples, **kwargs)
        summary = self.backbone.sparsity_summary()
        for i, sample in enumerate(results):
            sample.set_metainfo(dict(sparsity=dict(
                activation_rate=float(summary.activation_rate[i]),
                backbone_flops_dense=summary.dense_flops,
                backbone_flops_executed=float(summary.executed_flops[i]),
                block_rates={k: float(v[i]) for k, v in summary.block_rates.items()})))
        return results


@MODELS.register_module()
class DynFasterRCNN(SparsityLossMixin, FasterRCNN):
    """Faster R-CNN with a dynamic backbone and ``loss_sparsity``."""


@MODELS.register_module()
class DynRetinaNet(SparsityLossMixin, RetinaNet):
    """RetinaNet with a dynamic backbone and ``loss_sparsity``."""


@MODELS.register_module()
class DynMaskRCNN(SparsityLossMixin, MaskRCNN):
    """Mask R-CNN with a dynamic backbone and ``loss_sparsity``."""


@MODELS.register_module()
class DynEncoderDecoder(SparsityLossMixin, EncoderDecoder):
    """mmseg EncoderDecoder (DeepLabv3, PSPNet, FCN heads) with ``loss_sparsity``."""
