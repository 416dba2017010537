"""Offline dataset fixtures in the real on-disk formats (no mmdet / mmseg imports here).

Names are re-exported lazily so that ``python -m mmdyn.datasets.<builder>`` does not
import the builder module twice (runpy warns about that).
"""
import importlib

_EXPORTS = {
    'COCO_CATEGORY_IDS': 'coco_fixture', 'COCO_CLASSES': 'coco_fixture',
    'build_coco_fixture': 'coco_fixture',
    'VOC_CLASSES': 'voc_fixture', 'build_voc_fixture': 'voc_fixture',
    'CITYSCAPES_CLASSES': 'cityscapes_fixture',
    'build_cityscapes_fixture': 'cityscapes_fixture',
    'DIGIT_CLASSES': 'digits_fixture', 'build_digits_fixture': 'digits_fixture',
    'check_digits_root': 'digits_fixture',
    'build_hpatches_fixture': 'hpatches_fixture',
    'EXCLUDED_SEQUENCES': 'hpatches', 'HPatchesSequence': 'hpatches',
    'read_sequence': 'hpatches', 'list_sequences': 'hpatches', 'load_image': 'hpatches',
    'read_homography': 'hpatches',
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
