"""Sparsity statistics beside COCO mAP / mIoU in the normal mmdet/mmseg evaluators."""
import json
import os

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS


@METRICS.register_module()
class SparsityMetric(BaseMetric):
    """Mean activation rate, per-block rates, backbone GFLOPs dense and executed.

    Reads the ``'sparsity'`` metainfo that Dyn* detectors/segmentors attach to every
    prediction. Add it to ``val_evaluator``/``test_evaluator`` next to the task metric.
    """
    default_prefix = 'sparsity'

    def __init__(self, per_block: bool = True, per_image_file=None, **kwargs):
        """``per_image_file``: also write every image's statistics to this JSON file
        (``tools/analysis/sparsity_histograms.py`` plots them)."""
        super().__init__(**kwargs)
        self.per_block = per_block
        self.per_image_file = per_image_file

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            stats = sample.get('sparsity') if isinstance(sample, dict) \
                else sample.metainfo.get('sparsity')
            if stats is None:
                raise KeyError("SparsityMetric: a prediction carries no 'sparsity' "
                               'statistics; use a Dyn* model (DynFasterRCNN, '
                               'DynRetinaNet, DynMaskRCNN, DynEncoderDecoder)')
            self.results.append(stats)

    def compute_metrics(self, results):
        if self.per_image_file:
            os.makedirs(os.path.dirname(os.path.abspath(self.per_image_file)), exist_ok=True)
            with open(self.per_image_file, 'w') as f:
                json.dump(results, f)
        dense = np.mean([r['backbone_flops_dense'] for r in results]) / 1e9
        executed = np.mean([r['backbone_flops_executed'] for r in results]) / 1e9
        metrics = dict(activation_rate=float(np.mean([r['activation_rate'] for r in results])),
                       backbone_gflops_dense=float(dense),
                       backbone_gflops_executed=float(executed),
                       flops_ratio=float(executed / dense))
        if self.per_block:
            for name in results[0]['block_rates']:
                metrics[f'rate_{name}'] = float(np.mean([r['block_rates'][name]
                                                         for r in results]))
        return metrics
