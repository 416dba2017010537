from .checkpoint import patch_mmengine_checkpoint_loading
from .launch import build_runner

__all__ = ['patch_mmengine_checkpoint_loading', 'build_runner']
