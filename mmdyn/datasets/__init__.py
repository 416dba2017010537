"""Offline dataset fixtures (no mmdet / mmseg imports here)."""
from .coco_fixture import COCO_CATEGORY_IDS, COCO_CLASSES, build_coco_fixture

__all__ = ['COCO_CATEGORY_IDS', 'COCO_CLASSES', 'build_coco_fixture']
