"""mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then
refuses mmengine's own checkpoints (they pickle ``HistoryBuffer``, numpy scalars and
the config). mmdyn re-registers mmengine's local-file loader with
``weights_only=False`` on import, so ``resume``, ``load_from`` and ``test`` work.
Only local paths are affected: checkpoints your own runs wrote."""
import os.path as osp
import pickle

import torch


def _load_local_checkpoint(filename, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as error:
        raise RuntimeError(f'{filename} is not a readable PyTorch checkpoint (truncated or '
                           f'corrupt?): {type(error).__name__}: {error}') from error


def patch_mmengine_checkpoint_loading():
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=_load_local_checkpoint, force=True)
