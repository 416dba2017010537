from .checkpoint import (allow_checkpoint_globals, patch_mmengine_checkpoint_loading,
                         safe_torch_load)
from .launch import (add_common_args, add_debug_arg, build_runner, check_metrics_computed,
                     finish_distributed, last_validation_metrics, load_config,
                     resolve_checkpoint, run_tool)

__all__ = ['allow_checkpoint_globals', 'patch_mmengine_checkpoint_loading', 'safe_torch_load',
           'add_common_args', 'add_debug_arg', 'build_runner', 'check_metrics_computed', 'finish_distributed',
           'last_validation_metrics', 'load_config', 'resolve_checkpoint', 'run_tool']
