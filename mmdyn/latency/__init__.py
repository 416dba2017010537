"""LASNet's latency predictor (Han et al., NeurIPS 2022, Sec. 3.3, Appendix A).

Predicts, from a hardware model (:class:`Hardware`, one JSON profile per device), the
latency of static and spatially dynamic (LAS) ResNet bottlenecks and of whole
LAS-ResNets (and, on a calibrated CPU profile, of SAR-ResNets: :mod:`.sar`);
calibrates a CPU profile on the running machine (:func:`calibrate_cpu`), searches the
patch size S per stage
(:func:`search_granularity`) and compares predictions with measured mmdyn blocks
(:func:`accuracy_study`). The modules of this package import numpy and the standard
library only (no torch, mmcv, mmdet, mmseg or mmengine at import time; the
calibration and the accuracy study import torch and mmdyn's models inside their
functions); ``import mmdyn.latency`` still runs ``mmdyn/__init__.py``, which registers
mmdyn's models when mmengine is installed. See docs/latency_predictor.md.
"""
from .accuracy import accuracy_study, measure_las_blocks, spearman
from .calibrate import Calibration, calibrate_cpu, save_calibration
from .engine import EngineModel, fit_engine
from .hardware import (Hardware, available_profiles, hardware_from_dict, hardware_to_dict,
                       load_profile, save_profile)
from .network import (BlockPrediction, NetworkLatency, StageLatency, predict_las_resnet,
                      rates_from_record)
from .predictor import (BlockLatency, OpLatency, cache_info, clear_caches,
                        dense_route_crossover, dynamic_block_latency, dynamic_conv,
                        elementwise_add, latency_ratio, masker_conv1, max_pool, num_patches,
                        scatter_add, static_block_latency, static_conv)
from .sar import SARNetworkLatency, SARSetting, predict_sar_config, predict_sar_resnet
from .search import (BackboneLayout, GranularitySearch, candidate_sizes, layout_from_config,
                     predict_backbone, search_granularity)

__all__ = [
    'Hardware', 'available_profiles', 'load_profile', 'save_profile', 'hardware_from_dict',
    'hardware_to_dict', 'EngineModel', 'fit_engine', 'OpLatency',
    'BlockLatency', 'static_conv', 'dynamic_conv', 'elementwise_add', 'max_pool',
    'scatter_add', 'masker_conv1', 'num_patches', 'static_block_latency',
    'dynamic_block_latency', 'dense_route_crossover', 'latency_ratio', 'clear_caches',
    'cache_info', 'BlockPrediction', 'StageLatency', 'NetworkLatency', 'predict_las_resnet',
    'Calibration', 'calibrate_cpu', 'save_calibration', 'BackboneLayout',
    'GranularitySearch', 'candidate_sizes', 'layout_from_config', 'predict_backbone',
    'search_granularity', 'accuracy_study', 'measure_las_blocks', 'spearman',
    'SARNetworkLatency', 'SARSetting', 'predict_sar_config', 'predict_sar_resnet',
    'rates_from_record'
]
