"""Offline dataset fixtures (no mmdet / mmseg imports here).

Names are re-exported lazily so that ``python -m mmdyn.datasets.coco_fixture`` does not
import the module twice (runpy warns about that).
"""
import importlib

__all__ = ['COCO_CATEGORY_IDS', 'COCO_CLASSES', 'build_coco_fixture']


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module('.coco_fixture', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
