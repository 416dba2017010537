"""What the analysis tools and the demo share: alternating timing (``timing``), static
twins and inference preparation (``twins``), complexity counts (``complexity``), and
per-method studies (``cad``, ``itd``: import them by module)."""
from .timing import keep_freed_memory, run_stem, stage_flops, time_alternating, time_models
from .twins import build_dense_resnet, prepare_dense_for_timing

__all__ = ['keep_freed_memory', 'run_stem', 'stage_flops', 'time_alternating', 'time_models',
           'build_dense_resnet', 'prepare_dense_for_timing']
