"""Schedules of dynamic networks, pushed into the model from ``runner.iter``.

Both hooks are stateless functions of the iteration, so a resumed run continues the
exact schedule (DESIGN contract 4).
"""
import math

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmdyn.models.backbones import DynamicBackboneMixin
from mmdyn.models.losses import check_target


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class TemperatureHook(Hook):
    """Gumbel temperature: exponential from ``start`` to ``end`` over training
    (tau_i = start * (end / start) ** (i / (N - 1))), or ``constant``."""
    priority = 'NORMAL'

    def __init__(self, start: float = 5.0, end: float = 0.1, schedule: str = 'exp'):
        if schedule not in ('exp', 'constant'):
            raise ValueError(f"schedule={schedule!r} is not one of ('exp', 'constant')")
        if not (start > 0 and end > 0):
            raise ValueError(f'temperatures must be > 0, got start={start}, end={end}')
        self.start, self.end, self.schedule = float(start), float(end), schedule

    def value(self, iteration: int, max_iters: int) -> float:
        if self.schedule == 'constant' or max_iters <= 1:
            return self.start
        progress = min(iteration / (max_iters - 1), 1.0)
        return self.start * (self.end / self.start) ** progress

    def before_train(self, runner):
        backbones = [m for m in _unwrap(runner.model).modules()
                     if isinstance(m, DynamicBackboneMixin)]
        if not backbones:
            raise TypeError('TemperatureHook needs a model with a dynamic backbone')
        self._backbones = backbones

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        tau = self.value(runner.iter, runner.max_iters)
        for backbone in self._backbones:
            backbone.set_temperature(tau)
        runner.message_hub.update_scalar('train/temperature', tau)


@HOOKS.register_module()
class SparsityTargetHook(Hook):
    """Sparsity target: ``start`` (1.0 = dense) stepping down in ``num_steps`` equal
    steps to the loss's final target, reached at ``end_fraction`` of training. Also
    tells the loss the training progress that anneals its per-block bounds."""
    priority = 'NORMAL'

    def __init__(self, num_steps: int = 3, end_fraction: float = 0.5, start: float = 1.0,
                 target=None):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f'num_steps must be a positive int, got {num_steps!r}')
        if not 0.0 < end_fraction <= 1.0:
            raise ValueError(f'end_fraction must be in (0, 1], got {end_fraction}')
        self.num_steps, self.end_fraction = num_steps, float(end_fraction)
        self.start = check_target(start)
        self.target = None if target is None else check_target(target)

    def value(self, iteration: int, max_iters: int, final: float) -> float:
        progress = iteration / max(1, self.end_fraction * max_iters)
        steps_done = min(self.num_steps, math.floor(progress * self.num_steps))
        return self.start - (self.start - final) * steps_done / self.num_steps

    def before_train(self, runner):
        model = _unwrap(runner.model)
        if getattr(model, 'sparsity_loss', None) is None:
            raise TypeError('SparsityTargetHook needs a Dyn* detector/segmentor with a '
                            f'sparsity loss; got {type(model).__name__}')
        self._model = model
        self._final = self.target if self.target is not None \
            else model.sparsity_loss.final_target

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        target = self.value(runner.iter, runner.max_iters, self._final)
        self._model.set_sparsity_target(target)
        self._model.set_sparsity_progress(runner.iter / max(1, runner.max_iters))
        runner.message_hub.update_scalar('train/sparsity_target', target)
