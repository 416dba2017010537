"""Feature extractors by name, for the tools and the HPatches sweep.

* ``sift``: the OpenCV SIFT baseline;
* ``d2net-os{8,4,2,1}``: SIFT keypoints + D2-Net descriptors at that output stride
  (the CAD paper's setting); ``d2net-os4-det``: D2-Net's own detector (single scale),
  ``d2net-os4-ms``: its multiscale pyramid (0.5, 1, 2);
* ``cad-os{4,2,1}-<d1>[-<d2>[-<d3>]]``: CAD-VGG, keypoint masks with one dilation per
  adaptive pool, e.g. ``cad-os1-25-51-51``;
* ``cad-os1-inverse-25-51-51``: the complement of that keypoint mask;
  ``cad-os1-random0.3``: random keep masks (keep ratio 0.3); ``cad-os1-full`` /
  ``cad-os1-down``: the two extremes.
"""
import re

NAME_HELP = ('sift | d2net-os{8,4,2,1}[-det|-ms] | cad-os{4,2,1}-<dilations> | '
             'cad-os{s}-inverse-<dilations> | cad-os{s}-random<ratio> | cad-os{s}-full | '
             'cad-os{s}-down')


def method_config(name: str, checkpoint='hed', num_keypoints: int = 512,
                  sampling: str = 'nearest', execution_mode: str = 'sparse') -> dict:
    """The extractor config of a method name (see the module docstring)."""
    if name == 'sift':
        return dict(type='SiftFeatures', num_keypoints=num_keypoints)
    common = dict(detector='sift', num_keypoints=num_keypoints, sampling=sampling)
    match = re.fullmatch(r'd2net-os([1248])(-det|-ms)?', name)
    if match:
        stride, variant = int(match.group(1)), match.group(2)
        config = dict(type='D2NetFeatures', backbone=dict(type='D2NetVGG', output_stride=stride,
                                                           checkpoint=checkpoint), **common)
        if variant:
            config.update(detector='d2net', scales=(1,) if variant == '-det' else (0.5, 1, 2))
        return config
    match = re.fullmatch(r'cad-os([124])-(.+)', name)
    if match:
        stride, rest = int(match.group(1)), match.group(2)
        steps = {4: 1, 2: 2, 1: 3}[stride]

        def keypoints(text):
            dilations = tuple(int(d) for d in text.split('-'))
            if len(dilations) != steps:
                raise ValueError(f'{name}: output stride {stride} has {steps} adaptive '
                                 f'pool(s), give {steps} dilation(s)')
            return dict(type='SiftKeypointMask', num_keypoints=num_keypoints, dilations=dilations)

        if rest == 'full':
            source = dict(type='FullResolutionMask')
        elif rest == 'down':
            source = dict(type='DownsampleAllMask')
        elif rest.startswith('random'):
            source = dict(type='RandomMask', keep_ratio=float(rest[len('random'):]))
        elif rest.startswith('inverse-'):
            source = dict(type='InverseMask', source=keypoints(rest[len('inverse-'):]))
        elif re.fullmatch(r'\d+(-\d+)*', rest):
            source = keypoints(rest)
        else:
            raise ValueError(f'unknown CAD mask in {name!r}; names: {NAME_HELP}')
        return dict(type='D2NetFeatures', **common, backbone=dict(
            type='CADVGG', output_stride=stride, checkpoint=checkpoint, mask_source=source,
            execution_mode=execution_mode))
    raise ValueError(f'unknown method {name!r}; names: {NAME_HELP}')


def build_method(name: str, **kwargs):
    from mmengine.registry import MODELS
    return MODELS.build(method_config(name, **kwargs))
