"""Let mmpretrain 1.2.0 import on the pinned stack, which has no torchvision.

mmpretrain imports torchvision at module level in four places that mmdyn never runs:
``torchvision.ops.boxes`` (visual-grounding metric, box utilities), the torchvision
transform wrappers (``torchvision/<Name>`` pipeline steps, ``MAERandomResizedCrop``) and
``torchvision.transforms.functional`` (only for PIL inputs in ``PackInputs``). Its image
classifier, heads, metrics, ``CustomDataset`` and the numpy pipelines need none of it.

When torchvision is not installed, :func:`install` registers placeholder modules under
the ``torchvision`` names: importing them works, and *using* anything from them raises an
``ImportError`` that says torchvision is needed for that mmpretrain feature. The
interpolation-mode enum mmpretrain reads at import time is provided with torchvision's
names. With a real torchvision installed this does nothing.
"""
import enum
import sys
import types
from importlib.util import find_spec

_MESSAGE = ('{name} needs torchvision, which the mmdyn stack does not install; '
            'mmpretrain features built on torchvision (torchvision/* pipeline steps, '
            'MAERandomResizedCrop, visual-grounding metrics, PIL inputs to PackInputs) are '
            'unavailable')


class _Placeholder(types.ModuleType):
    """A module whose every missing attribute raises a clear ImportError when used."""

    def __getattr__(self, attribute):
        if attribute == '__version__':  # mmengine's collect_env skips a missing torchvision
            raise ModuleNotFoundError(_MESSAGE.format(name='torchvision'))
        if attribute.startswith('__'):
            raise AttributeError(attribute)
        name = f'{self.__name__}.{attribute}'

        def unavailable(*args, **kwargs):
            raise ImportError(_MESSAGE.format(name=name))
        return unavailable


class InterpolationMode(enum.Enum):
    """torchvision.transforms.InterpolationMode's members (read at import time)."""
    NEAREST = 'nearest'
    NEAREST_EXACT = 'nearest-exact'
    BILINEAR = 'bilinear'
    BICUBIC = 'bicubic'
    BOX = 'box'
    HAMMING = 'hamming'
    LANCZOS = 'lanczos'


class RandomResizedCrop:
    """Base class of mmpretrain's MAERandomResizedCrop; unusable without torchvision."""

    def __init__(self, *args, **kwargs):
        raise ImportError(_MESSAGE.format(name='torchvision.transforms.RandomResizedCrop'))


def install() -> bool:
    """Register the placeholders if torchvision is absent; returns whether it did."""
    if 'torchvision' in sys.modules or find_spec('torchvision') is not None:
        return False
    modules = {name: _Placeholder(name) for name in (
        'torchvision', 'torchvision.ops', 'torchvision.ops.boxes', 'torchvision.transforms',
        'torchvision.transforms.functional', 'torchvision.transforms.transforms')}
    modules['torchvision'].__mmdyn_placeholder__ = True
    for name, module in modules.items():
        parent, _, child = name.rpartition('.')
        if parent:
            setattr(modules[parent], child, module)
        sys.modules[name] = module
    modules['torchvision.transforms.transforms'].InterpolationMode = InterpolationMode
    modules['torchvision.transforms'].RandomResizedCrop = RandomResizedCrop
    return True
