"""Hooks the reliability end-to-end tests put into their training runs (imported by
the configs through ``custom_imports``; ``tests/`` is on the subprocess's path)."""
import json
import os
import signal

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SigkillHook(Hook):
    """SIGKILL this process at the start of iteration ``at_iter`` (1-based), after its
    data batch was loaded: no cleanup, no checkpoint, a crash mid-epoch."""
    priority = 'VERY_LOW'

    def __init__(self, at_iter: int):
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at_iter:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class RankDumpHook(Hook):
    """Write each rank's losses per iteration (``losses_rank<r>.json``) and final
    parameters (``params_rank<r>.pth``, and the initial ones, ``params_init_rank<r>.pth``)
    to the work dir."""
    priority = 'VERY_LOW'

    def __init__(self):
        self.losses = {}

    def before_train(self, runner):
        self._save(runner, 'params_init')

    def _save(self, runner, name):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(runner.work_dir, f'{name}_rank{get_rank()}.pth'))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses[runner.iter] = {k: float(v) for k, v in outputs.items() if 'loss' in k}

    def after_train(self, runner):
        rank = get_rank()
        with open(os.path.join(runner.work_dir, f'losses_rank{rank}.json'), 'w') as f:
            json.dump(self.losses, f)
        self._save(runner, 'params')
