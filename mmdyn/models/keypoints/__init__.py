"""D2-Net detection and description (Dusmanu et al., CVPR 2019), the CAD paper's
SIFT-keypoint mode, and VGG16 weight conversion. Nothing here imports the backbones
(they import :mod:`.weights`); extractors build them from configs."""
from .detection import (bilinear_lookup, describe_detections, detect_and_describe,
                        downscale_positions, hard_detection, multiscale_detect_and_describe,
                        refine_positions, upscale_positions)
from .features import D2NetFeatures, SiftFeatures, grey_image, strongest_sift
from .hpatches_model import HPatchesFeatureModel
from .methods import NAME_HELP, build_method, method_config
from .preprocess import FIT_MODES, SizedImage, fit_image
from .weights import (BGR_MEANS, WEIGHT_SOURCES, convert_d2net, convert_hed_arrays,
                      convert_torchvision, find_hed_weights, load_vgg16_weights)

__all__ = ['bilinear_lookup', 'describe_detections', 'detect_and_describe',
           'downscale_positions', 'hard_detection', 'multiscale_detect_and_describe',
           'refine_positions', 'upscale_positions', 'D2NetFeatures', 'SiftFeatures',
           'HPatchesFeatureModel', 'NAME_HELP', 'build_method', 'method_config', 'grey_image', 'strongest_sift', 'FIT_MODES', 'SizedImage', 'fit_image',
           'BGR_MEANS', 'WEIGHT_SOURCES', 'convert_d2net', 'convert_hed_arrays',
           'convert_torchvision', 'find_hed_weights', 'load_vgg16_weights']
