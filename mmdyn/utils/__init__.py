from .checkpoint import patch_mmengine_checkpoint_loading
from .launch import (add_common_args, build_runner, finish_distributed, load_config,
                     resolve_checkpoint)

__all__ = ['patch_mmengine_checkpoint_loading', 'add_common_args', 'build_runner',
           'finish_distributed', 'load_config', 'resolve_checkpoint']
