"""CAD-ResNet mask sources: where content-adaptive downsampling keeps full resolution."""
from .basic import (DownsampleAllMask, EdgeMask, FullResolutionMask, InverseMask, LearnedMask,
                    MaskSource, RandomMask, blocks_any, check_odd_size, dilate)
from .keypoint_oracle import KeypointMask, OracleMask, denormalize_to_grey, oracle_keep_map
from .sift_keypoints import PAPER_TRIPLETS, SiftKeypointMask, caffe_to_grey

__all__ = ['MaskSource', 'FullResolutionMask', 'DownsampleAllMask', 'RandomMask', 'InverseMask',
           'EdgeMask', 'LearnedMask', 'KeypointMask', 'OracleMask', 'oracle_keep_map',
           'denormalize_to_grey', 'blocks_any', 'check_odd_size', 'dilate',
           'SiftKeypointMask', 'PAPER_TRIPLETS', 'caffe_to_grey']
