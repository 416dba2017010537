"""mmdyn: spatially adaptive (dynamic) CNN backbones for MMDetection 3.x and
MMSegmentation 1.x, with a true sparse inference path.

``import mmdyn`` registers every model, hook and metric in mmengine's root registries
(found from both ``default_scope='mmdet'`` and ``'mmseg'`` configs) and fixes
mmengine's checkpoint loading under torch >= 2.6 (weights only: a checkpoint runs no
code on load). ``mmdyn.ops`` needs torch alone: on
a machine without mmengine, importing mmdyn registers nothing.
"""
from importlib.util import find_spec

__version__ = '0.1.0'

if find_spec('mmengine') is not None:
    from .utils import patch_mmengine_checkpoint_loading
    from .utils.torchvision_placeholder import install as _let_mmpretrain_import

    # mmpretrain imports torchvision, which the stack lacks
    patch_mmengine_checkpoint_loading(torchvision_missing=_let_mmpretrain_import())
    from . import engine, evaluation, models  # noqa: F401,E402  (registers modules)
