"""Exact resume: the global torch random state travels with the checkpoint.

mmengine resumes weights, optimizer, schedulers and the message hub, and its
iteration-based loop replays the data loader up to the resumed iteration (the sampler
position and the pipeline's numpy / python draws are reproduced by that replay). What
it does not restore is the global torch generator, which the training forwards draw
from: Gumbel noise of the maskers, dropout, RoI samplers. After a resume those draws
differ from the uninterrupted run, and so does every weight from there on.

This hook stores ``torch.get_rng_state()`` in each checkpoint and, on resume, sets it
back right before the first resumed iteration (after the data replay, which draws
nothing from torch's global generator). ``tools/train.py`` adds it to every run.

Not covered (documented in docs/reliability.md): mid-epoch resume of mmengine's
*epoch*-based loop, which restarts the interrupted epoch's data from its beginning.
"""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

CHECKPOINT_KEY = 'mmdyn_torch_rng_state'


@HOOKS.register_module()
class RandomStateHook(Hook):
    priority = 'VERY_HIGH'

    def __init__(self):
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = torch.get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get(CHECKPOINT_KEY)

    def before_train(self, runner) -> None:
        if runner.iter == 0:  # load_from (fine-tuning), not a resume: nothing to restore
            self._pending = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is not None:
            torch.set_rng_state(self._pending)
            self._pending = None
