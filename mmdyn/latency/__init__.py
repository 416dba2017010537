"""LASNet's latency predictor (Han et al., NeurIPS 2022, Sec. 3.3, Appendix A).

Predicts, from a hardware model (:class:`Hardware`, one JSON profile per device), the
latency of static and spatially dynamic (LAS) ResNet bottlenecks and of whole
LAS-ResNets. The modules of this package import numpy and the standard library only
(no torch, mmcv, mmdet, mmseg or mmengine); ``import mmdyn.latency`` still runs
``mmdyn/__init__.py``, which registers mmdyn's models when mmengine is installed.
See docs/latency_predictor.md.
"""
from .hardware import Hardware, available_profiles, load_profile, save_profile
from .network import BlockPrediction, NetworkLatency, StageLatency, predict_las_resnet
from .predictor import (BlockLatency, OpLatency, cache_info, clear_caches,
                        dynamic_block_latency, dynamic_conv, elementwise_add, latency_ratio,
                        masker_conv1, max_pool, num_patches, scatter_add,
                        static_block_latency, static_conv)

__all__ = [
    'Hardware', 'available_profiles', 'load_profile', 'save_profile', 'OpLatency',
    'BlockLatency', 'static_conv', 'dynamic_conv', 'elementwise_add', 'max_pool',
    'scatter_add', 'masker_conv1', 'num_patches', 'static_block_latency',
    'dynamic_block_latency', 'latency_ratio', 'clear_caches', 'cache_info',
    'BlockPrediction', 'StageLatency', 'NetworkLatency', 'predict_las_resnet'
]
