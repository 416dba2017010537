"""Checkpoints load without running code from them.

torch >= 2.6 unpickles with ``weights_only=True`` by default: tensors, containers and
the types on an allow-list, never an arbitrary callable (a pickle can name any function
to call while it is read). mmengine 0.10.7 calls ``torch.load`` without the argument,
and its own checkpoints carry a few types beyond torch's list: ``HistoryBuffer`` in the
message hub, the numpy arrays and scalars inside it and in the logged meta. mmdyn
re-registers mmengine's local-file loader so that it loads with ``weights_only=True``
and exactly those types allowed for that call (``torch.serialization.safe_globals``),
nothing else: ``resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')`` and
``tools/test.py CKPT`` work, and a checkpoint that asks for anything else is refused
with an error naming what it asks for.

If you trust such a file (you wrote it), allow it explicitly:

* ``allow_checkpoint_globals(SomeClass, ...)``: those types, for every later load;
* ``MMDYN_TRUST_CHECKPOINTS=1`` in the environment: full unpickling of every local
  checkpoint in that process (a checkpoint can then run code on load).
"""
import os
import os.path as osp
import pickle
import re
from typing import List

import torch

ENV_TRUST = 'MMDYN_TRUST_CHECKPOINTS'
_EXTRA_GLOBALS: list = []


def _numpy_globals() -> list:
    """What pickled numpy arrays, scalars and dtypes name (numpy 1.x and 2.x)."""
    import numpy as np
    core = np._core if hasattr(np, '_core') else np.core
    dtypes = [type(np.dtype(name)) for name in (
        'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
        'float16', 'float32', 'float64')]
    # bytes: an empty array's buffer is pickled as bytes()
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            bytes, *dtypes]


REFUSED_GETATTR = 'is not allowed in a checkpoint'


def _history_buffer_method(owner, name):
    """What a checkpoint's ``getattr`` may do: mmengine's ``HistoryBuffer`` pickles its
    statistics methods as ``getattr(HistoryBuffer, 'mean')``. Any other attribute (a
    pickle reaching ``ndarray.tofile`` or ``os.system`` through ``getattr``) is refused."""
    from mmengine.logging import HistoryBuffer
    methods = {'min', 'max', 'current', 'mean', *HistoryBuffer._statistics_methods}
    if owner is HistoryBuffer and isinstance(name, str) and name in methods:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f'getattr({owner!r}, {name!r}) {REFUSED_GETATTR} (only '
                                 "the statistics methods of mmengine's HistoryBuffer)")


def checkpoint_globals() -> list:
    """The types mmengine's and mmdyn's checkpoints hold beyond torch's default list
    (``builtins.getattr`` restricted to :func:`_history_buffer_method`), plus those
    added with :func:`allow_checkpoint_globals`."""
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_method, 'builtins.getattr'), *_numpy_globals(),
            *_EXTRA_GLOBALS]


def allow_checkpoint_globals(*types):
    """Allow these types in every later checkpoint load of this process (a checkpoint
    you trust that holds objects of your own classes)."""
    _EXTRA_GLOBALS.extend(types)


def _trusted() -> bool:
    value = os.environ.get(ENV_TRUST, '')
    if value not in ('', '0', '1'):
        raise ValueError(f'{ENV_TRUST}={value!r}: set it to 1 (trust every local checkpoint '
                         'of this process: full unpickling) or 0 / unset')
    return value == '1'


def safe_torch_load(filename: str, map_location=None):
    """``torch.load`` of a local file with ``weights_only=True`` and mmengine's and
    mmdyn's checkpoint types allowed (or full unpickling when ``MMDYN_TRUST_CHECKPOINTS=1``).
    A truncated or corrupt file, and a checkpoint needing another global, get a
    RuntimeError that says which and what to do."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if _trusted():
        return _load(filename, map_location, weights_only=False)
    with torch.serialization.safe_globals(checkpoint_globals()):
        try:
            return _load(filename, map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            names = _refused_globals(filename, error)
            if not names:
                raise _unreadable(filename, error) from None
            raise RuntimeError(
                f'{filename} was not loaded: unpickling it would use {", ".join(names)}, '
                "which mmdyn's checkpoint loader does not allow (a pickle can run code "
                'on load). If you trust this file, allow the type with '
                'mmdyn.utils.allow_checkpoint_globals(...) or set '
                f'{ENV_TRUST}=1 for this process.') from None


def _refused_globals(filename: str, error: Exception) -> List[str]:
    """The globals outside the allowed types that the checkpoint names ([] when the
    unpickler failed for another reason: a corrupt file)."""
    allowed = {item[1] if isinstance(item, tuple) else f'{item.__module__}.{item.__qualname__}'
               for item in checkpoint_globals()}
    try:
        named = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # noqa: BLE001 - a file it cannot scan: rely on the message
        named = []
    named = [n for n in named if n not in allowed]
    refused = re.search(r'(getattr\(.*?\)) ' + REFUSED_GETATTR, str(error))
    if refused:
        named.append(refused.group(1))
    return named or sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(error))))


def _load(filename: str, map_location, weights_only: bool):
    try:
        return torch.load(filename, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError:
        raise
    except (EOFError, RuntimeError, ValueError) as error:
        raise _unreadable(filename, error) from error


def _unreadable(filename: str, error: Exception) -> RuntimeError:
    return RuntimeError(f'{filename} is not a readable PyTorch checkpoint (truncated or '
                        f'corrupt?): {type(error).__name__}: {error}')


def _torchvision_weights_unavailable(filename, map_location=None):
    raise RuntimeError(
        f"{filename}: torchvision's pretrained weights are downloaded by torchvision, which "
        'this stack does not install (and nothing is downloaded at run time). Point the '
        "config at a local file: model.backbone.init_cfg=dict(type='Pretrained', "
        "checkpoint='/path/to/resnet.pth') (a torchvision or mmdet ResNet state dict), or "
        'set model.backbone.init_cfg=None to start from random weights')


def patch_mmengine_checkpoint_loading(torchvision_missing: bool = False):
    """mmengine's local-file checkpoint loader becomes :func:`safe_torch_load`; without
    torchvision, ``torchvision://`` checkpoints fail with an error that says which
    config key to set instead."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=safe_torch_load, force=True)
    if torchvision_missing:
        CheckpointLoader.register_scheme(prefixes='torchvision://',
                                         loader=_torchvision_weights_unavailable, force=True)
