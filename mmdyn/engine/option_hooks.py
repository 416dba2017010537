"""Random option fine-tuning (ROF, Sec. 3.4 of "The Untapped Potential of Off-the-Shelf
CNNs"): every training batch runs with a random option permutation of an ITD backbone.

The permutation of iteration ``i`` is drawn from a generator seeded with ``(seed, i)``:
a pure function of ``runner.iter``, so a resumed run draws the same permutations
(DESIGN contract 4). Validation and testing run with the backbone's permutation as it
was before training (the default unless the config set one).
"""
import numpy as np
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .schedule_hooks import _unwrap


def _itd_backbones(model):
    backbones = [m for m in _unwrap(model).modules() if hasattr(m, 'option_choices')
                 and hasattr(m, 'set_permutation')]
    if not backbones:
        raise TypeError('RandomOptionHook needs a model with an ITD backbone (ITDResNet)')
    return backbones


@HOOKS.register_module()
class RandomOptionHook(Hook):
    """Draw a random permutation of the option grid ``space`` (``{attribute: values}``,
    e.g. ``dict(stride=(1, 2, 3))``; see ``ITDResNet.option_choices``) at ``positions``
    (default: every dynamic position) for each training batch.

    ``keep_default``: the probability that a batch runs with the default permutation
    instead (0: always random)."""
    priority = 'NORMAL'

    def __init__(self, space: dict, positions=None, seed: int = 0, keep_default: float = 0.0):
        if not 0.0 <= keep_default <= 1.0:
            raise ValueError(f'keep_default must be in [0, 1], got {keep_default}')
        self.space, self.positions = dict(space), positions
        self.seed, self.keep_default = int(seed), float(keep_default)

    def before_train(self, runner):
        self._backbones = _itd_backbones(runner.model)
        self._choices = [b.option_choices(self.space, self.positions)
                         for b in self._backbones]  # validates the space
        self._evaluation = [b.permutation for b in self._backbones]

    def permutation(self, iteration: int, choices):
        """The permutation of ``iteration`` (``None``: the default)."""
        rng = np.random.default_rng([self.seed, iteration])
        if self.keep_default and rng.random() < self.keep_default:
            return None
        return tuple(options[rng.integers(len(options))] for options in choices)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        for backbone, choices, evaluation in zip(self._backbones, self._choices,
                                                 self._evaluation):
            drawn = self.permutation(runner.iter, choices)
            backbone.set_permutation(evaluation if drawn is None else drawn)

    def _restore(self, runner):
        for backbone, evaluation in zip(getattr(self, '_backbones', []),
                                        getattr(self, '_evaluation', [])):
            backbone.set_permutation(evaluation)

    def before_val_epoch(self, runner):
        self._restore(runner)

    def after_train(self, runner):
        self._restore(runner)
