"""One row per registered dynamic backbone, shared by the deployment, mixed-precision
and bad-input tests: a small instance with non-trivial BatchNorm statistics and fixed
masks (so every execution mode of one model sees the same hard masks), its execution
modes, and the invalid arguments it documents.

A new backbone is one more ``BackboneCase`` in ``CASES`` (and its invalid arguments in
``BAD_ARGUMENTS``).
"""
from dataclasses import dataclass, field
from typing import Callable, Tuple

import torch

from mmdyn.analysis.device_check import (CAD_RANDOM, ITD_PERMUTATION, SAR_SMALL, forced,
                                         permuted, randomize_batchnorm_)
from mmdyn.models.backbones import (CADVGG, CADResNet, ITDResNet, ITDResNeXt, LASResNet,
                                    SARResNet, SFSIResNet)

__all__ = ['CAD_RANDOM', 'SAR_SMALL', 'forced', 'randomize_batchnorm_', 'BackboneCase', 'CASES',
           'BLOCK_VARIANTS', 'BAD_ARGUMENTS']  # the helpers are shared with the device check


@dataclass
class BackboneCase:
    name: str
    cls: type
    kwargs: dict
    modes: Tuple[str, ...]
    #: fixes the masks of a built model (forced random masks, a seeded mask source)
    fix_masks: Callable = field(default=lambda model: None)
    size: Tuple[int, int] = (35, 45)  # odd: every stage pads somewhere
    #: its sparse path runs no BatchNorm layer (False: no sparse path, or no BatchNorm
    #: to fold, as D2-Net's VGG)
    sparse_folds_batchnorm: bool = True

    def build(self):
        torch.manual_seed(0)
        model = self.cls(init_cfg=None, **self.kwargs)
        randomize_batchnorm_(model).eval()
        self.fix_masks(model)
        return model

    def input(self, batch: int = 1, seed: int = 0):
        return torch.randn(batch, 3, *self.size, generator=torch.Generator().manual_seed(seed))


#: one row per registered backbone
CASES = [
    BackboneCase('las-r50', LASResNet, dict(depth=50, granularity=(8, 4, 7, 1)),
                 ('masked', 'sparse'), forced(0.5)),
    BackboneCase('sar-r18', SARResNet, dict(depth=18, sar_setting='G2s2a2b1', **SAR_SMALL),
                 ('masked', 'sparse'), forced(0.5)),
    BackboneCase('cad-r50-os32', CADResNet, dict(depth=50, base_output_stride=32, **CAD_RANDOM),
                 ('dense', 'sparse')),
    BackboneCase('sfsi-r50', SFSIResNet, dict(depth=50, base_channels=8, stem_channels=8,
                                              grid_prior_interval=3),
                 ('masked', 'sparse'), forced(0.5)),
    # ITD has one path (the permutation is its dynamic part); 'auto' names it
    BackboneCase('itd-r18', ITDResNet, dict(depth=18, base_channels=16, stem_channels=16),
                 ('auto',), permuted(**ITD_PERMUTATION), sparse_folds_batchnorm=False),
    BackboneCase('itd-x50-nominal', ITDResNeXt,
                 dict(depth=50, groups=4, base_width=4, base_channels=16, stem_channels=16,
                      output_size='nominal'),
                 ('auto',), permuted(**ITD_PERMUTATION), sparse_folds_batchnorm=False),
    BackboneCase('cad-vgg-os2', CADVGG, dict(output_stride=2, base_channels=8, **CAD_RANDOM),
                 ('dense', 'sparse'), sparse_folds_batchnorm=False),
]
#: SAR's bottleneck refinement: its mixed-precision path (in-place products onto the
#: identity rows) differs from the basic block's
BLOCK_VARIANTS = [
    BackboneCase('sar-r50', SARResNet, dict(depth=50, sar_setting='G2s4a1', **SAR_SMALL),
                 ('masked', 'sparse'), forced(0.5)),
]

NAN = float('nan')

#: (backbone class, minimal valid kwargs, [(bad kwargs, the argument the error names)])
BAD_ARGUMENTS = {
    LASResNet: (dict(depth=18), [
        (dict(depth=19), 'depth'), (dict(depth='50'), 'depth'), (dict(depth=-18), 'depth'),
        (dict(granularity=(4, 4, 2)), 'granularity'),
        (dict(granularity=(4, 4, 0, 1)), 'granularity'),
        (dict(granularity=(4, -4, 2, 1)), 'granularity'),
        (dict(granularity=(4, 4.5, 2, 1)), 'granularity'),
        (dict(granularity=(4, '4', 2, 1)), 'granularity'),
        (dict(granularity='4421'), 'granularity'),
        (dict(granularity=((4, 4, 4), 4, 2, 1)), 'granularity'),
        (dict(granularity=(NAN, 4, 2, 1)), 'granularity'),
        (dict(execution_mode='fast'), 'execution_mode'),
        (dict(execution_mode=1), 'execution_mode'),
        (dict(temperature=0.0), 'temperature'), (dict(temperature=-1.0), 'temperature'),
        (dict(temperature=NAN), 'temperature'), (dict(temperature='1'), 'temperature'),
        (dict(mask_init_bias=NAN), 'mask_init_bias'),
        (dict(mask_init_bias='3'), 'mask_init_bias'),
        (dict(num_stages=0), 'num_stages'), (dict(num_stages=5), 'num_stages'),
        (dict(num_stages='4'), 'num_stages'),
        (dict(multi_grid=(1, 2, 4)), 'multi_grid'),
        (dict(basic_conv1='halo'), 'basic_conv1'), (dict(basic_conv1=True), 'basic_conv1'),
        (dict(depth=50, basic_conv1='sparse'), 'basic_conv1'),
        (dict(with_cp=True), 'with_cp'),
        (dict(style='caffe', depth=50), 'style'),
        (dict(dcn=dict(type='DCN', deform_groups=1), stage_with_dcn=(False, True, True, True),
              depth=50), 'dcn'),
        (dict(norm_cfg=dict(type='GN', num_groups=8)), 'norm_cfg'),
    ]),
    SARResNet: (dict(depth=18, mask_size=(4, 4, 2), min_input_size=32), [
        (dict(depth=152), 'depth'), (dict(depth='18'), 'depth'),
        (dict(sar_setting='G2s2'), 'sar_setting'), (dict(sar_setting=2), 'sar_setting'),
        (dict(sar_setting='G3s2a2b1'), 'G=3'),
        (dict(sar_setting='G2s3a2b1'), 'base_scale'),
        (dict(sar_setting='G2s2a2b1', groups=2), 'sar_setting'),
        (dict(groups=0), 'groups'), (dict(groups=-2), 'groups'), (dict(groups='2'), 'groups'),
        (dict(groups=(2, 2)), 'groups'),
        (dict(alpha=3), 'alpha'), (dict(alpha=NAN), 'alpha'),
        (dict(beta=0.3), 'beta'), (dict(beta=-1.0), 'beta'), (dict(beta=NAN), 'beta'),
        (dict(base_scale=0), 'base_scale'),
        (dict(mask_size=(4, 4, 0)), 'mask_size'), (dict(mask_size=(4, 4, -2)), 'mask_size'),
        (dict(mask_size=(4, 4, 2.5)), 'mask_size'), (dict(mask_size=(9, 4, 2)), 'mask_size'),
        (dict(min_input_size=-32), 'min_input_size'),
        (dict(min_input_size='32'), 'min_input_size'),
        (dict(fusion_reduction=0), 'fusion_reduction'),
        (dict(fusion_reduction='16'), 'fusion_reduction'),
        (dict(execution_mode='dense'), 'execution_mode'),
        (dict(temperature=0.0), 'temperature'), (dict(temperature=NAN), 'temperature'),
        (dict(mask_init_bias=NAN), 'mask_init_bias'),
        (dict(num_stages=5), 'num_stages'), (dict(num_stages='4'), 'num_stages'),
        (dict(multi_grid=(1, 2, 4)), 'multi_grid'), (dict(with_cp=True), 'with_cp'),
        (dict(norm_cfg=dict(type='GN', num_groups=8)), 'norm_cfg'),
    ]),
    CADResNet: (dict(depth=50), [
        (dict(depth=18), 'depth'), (dict(depth='50'), 'depth'),
        (dict(base_output_stride=8), 'base_output_stride'),
        (dict(base_output_stride='16'), 'base_output_stride'),
        (dict(base_output_stride=-16), 'base_output_stride'),
        (dict(execution_mode='masked'), 'execution_mode'),
        (dict(strides=(1, 2, 2, 2)), 'strides'), (dict(num_stages=3), 'num_stages'),
        (dict(mask_source=dict(type='LearnedMask'), base_output_stride=32), 'base_output_stride'),
        (dict(mask_source=dict(type='RandomMask', keep_ratio=NAN)), 'keep_ratio'),
        (dict(mask_source=dict(type='RandomMask', keep_ratio=-0.1)), 'keep_ratio'),
        (dict(mask_source=dict(type='RandomMask', keep_ratio='0.4')), 'keep_ratio'),
        (dict(mask_source=dict(type='NoSuchMask')), 'mask_source'),
        (dict(mask_source='EdgeMask'), 'mask_source'),
        (dict(mask_source=dict(type='EdgeMask', threshold=NAN)), 'threshold'),
        (dict(mask_source=dict(type='EdgeMask', threshold=-1.0)), 'threshold'),
        (dict(mask_source=dict(type='EdgeMask', dilation=4)), 'dilation'),
        (dict(mask_source=dict(type='EdgeMask', dilation='11')), 'dilation'),
        (dict(mask_source=dict(type='EdgeMask', output_stride=0)), 'output_stride'),
        (dict(base_output_stride=32, mask_source=dict(type='KeypointMask', dilations=(25, ))),
         'dilations'),
        (dict(temperature=0.0), 'temperature'), (dict(temperature=NAN), 'temperature'),
        (dict(multi_grid=(1, 2, 4)), 'multi_grid'), (dict(with_cp=True), 'with_cp'),
        (dict(style='caffe'), 'style'),
        (dict(norm_cfg=dict(type='GN', num_groups=8)), 'norm_cfg'),
    ]),
    SFSIResNet: (dict(depth=50, base_channels=8, stem_channels=8), [
        (dict(depth=18), 'depth'), (dict(depth='50'), 'depth'), (dict(depth=-50), 'depth'),
        (dict(sampling='gumbel'), 'sampling'), (dict(sampling=1), 'sampling'),
        (dict(grid_prior_interval=0), 'grid_prior_interval'),
        (dict(grid_prior_interval=-3), 'grid_prior_interval'),
        (dict(grid_prior_interval='11'), 'grid_prior_interval'),
        (dict(grid_prior_interval=2.5), 'grid_prior_interval'),
        (dict(grid_prior_interval=NAN), 'grid_prior_interval'),
        (dict(interpolation_kernel=6), 'interpolation_kernel'),
        (dict(interpolation_kernel=-1), 'interpolation_kernel'),
        (dict(interpolation_kernel=0), 'interpolation_kernel'),
        (dict(interpolation_kernel='7'), 'interpolation_kernel'),
        (dict(interpolation_kernel=NAN), 'interpolation_kernel'),
        (dict(init_sigma=0.0), 'init_sigma'), (dict(init_sigma=-1.0), 'init_sigma'),
        (dict(init_sigma=NAN), 'init_sigma'), (dict(init_sigma='3'), 'init_sigma'),
        (dict(mask_init_bias=NAN), 'mask_init_bias'),
        (dict(mask_init_bias='3'), 'mask_init_bias'),
        (dict(temperature=0.0), 'temperature'), (dict(temperature=NAN), 'temperature'),
        (dict(temperature='1'), 'temperature'),
        (dict(test_temperature=0.0), 'test_temperature'),
        (dict(test_temperature=-0.01), 'test_temperature'),
        (dict(test_temperature=NAN), 'test_temperature'),
        (dict(test_temperature='0.01'), 'test_temperature'),
        (dict(sampling_seed='1'), 'sampling_seed'), (dict(sampling_seed=1.5), 'sampling_seed'),
        (dict(sampling_seed=NAN), 'sampling_seed'),
        (dict(sparse_conv3='fused'), 'sparse_conv3'), (dict(sparse_conv3=None), 'sparse_conv3'),
        (dict(execution_mode='dense'), 'execution_mode'),
        (dict(execution_mode=1), 'execution_mode'),
        (dict(multi_grid=(1, 2, 4)), 'multi_grid'),
        (dict(num_stages=0), 'num_stages'), (dict(num_stages=5), 'num_stages'),
        (dict(num_stages='4'), 'num_stages'),
        (dict(strides=(1, 2, 2)), 'strides'), (dict(dilations=(1, 1, 0, 1)), 'dilations'),
        (dict(base_channels=-8), 'base_channels'), (dict(base_channels='8'), 'base_channels'),
        (dict(stem_channels=0), 'stem_channels'),
        (dict(groups=0), 'groups'), (dict(groups=-4), 'groups'), (dict(groups='4'), 'groups'),
        (dict(base_width=0), 'base_width'), (dict(base_width='4'), 'base_width'),
        (dict(dcn=dict(type='DCN'), stage_with_dcn=(False, True, True, True)), 'dcn'),
        (dict(dcn=dict(type='DCNv2', fallback_on_stride=True),
              stage_with_dcn=(False, True, True, True)), 'fallback_on_stride'),
        (dict(style='caffe'), 'style'), (dict(with_cp=True), 'with_cp'),
        (dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=1. / 16),
                            stages=(False, True, True, True), position='after_conv3')]),
         'plugins'),
        (dict(norm_cfg=dict(type='GN', num_groups=8)), 'norm_cfg'),
    ]),
    ITDResNet: (dict(depth=18, base_channels=16, stem_channels=16), [
        (dict(depth=19), 'depth'), (dict(depth='18'), 'depth'), (dict(depth=-18), 'depth'),
        (dict(dynamic_positions=('A', 'E')), 'dynamic_positions'),
        (dict(dynamic_positions=()), 'dynamic_positions'),
        (dict(dynamic_positions=('A', 'A')), 'dynamic_positions'),
        (dict(dynamic_positions=1), 'dynamic_positions'),
        (dict(dynamic_positions=('B',), upsampling_positions=('A',)), 'upsampling_positions'),
        (dict(upsampling_positions='X'), 'upsampling_positions'),
        (dict(upsampling_positions=1), 'upsampling_positions'),
        (dict(output_size='fixed'), 'output_size'), (dict(output_size=None), 'output_size'),
        (dict(permutation=dict(stride=(1, 2))), 'stride'),
        (dict(permutation=dict(stride=(1, 2, 5, 2))), 'stride=5'),
        (dict(permutation=dict(stride=(1, 2, -2, 2))), 'stride=-2'),
        (dict(permutation=dict(stride=(1, 2, NAN, 2))), 'stride=nan'),
        (dict(permutation=dict(dilation=(1, 6, 1, 1))), 'dilation=6'),
        (dict(permutation=dict(kernel_size=(1, 2, 3, 3))), 'kernel_size=2'),
        (dict(permutation=dict(kernel_size=(3, '3', 3, 3))), 'kernel_size'),
        (dict(permutation=dict(padding=(1, 1, 1, 1))), 'padding'),
        (dict(permutation='s2'), 'permutation'),
        (dict(permutation=[(1, 1, 3)] * 3), 'permutation'),
        (dict(dynamic_positions=('B',), upsampling_positions=(), permutation=dict(stride=(0.5,))),
         'stride 1/2'),
        (dict(min_feature_size=0), 'min_feature_size'),
        (dict(min_feature_size=-1), 'min_feature_size'),
        (dict(min_feature_size='1'), 'min_feature_size'),
        (dict(min_feature_size=NAN), 'min_feature_size'),
        (dict(min_feature_size=1.5), 'min_feature_size'),
        (dict(num_stages=0), 'num_stages'), (dict(num_stages=5), 'num_stages'),
        (dict(num_stages='4'), 'num_stages'), (dict(strides=(1, 2, 2)), 'strides'),
        (dict(dilations=(1, 1, 1, -2)), 'dilations'),
        (dict(base_channels=-8), 'base_channels'), (dict(stem_channels='16'), 'stem_channels'),
        (dict(multi_grid=(1, 2, 4)), 'multi_grid'), (dict(style='caffe'), 'style'),
        (dict(dcn=dict(type='DCN', deform_groups=1), stage_with_dcn=(False, True, True, True)),
         'dcn'),
        (dict(with_cp=True), 'with_cp'),
        (dict(norm_cfg=dict(type='GN', num_groups=8)), 'norm_cfg'),
    ]),
    ITDResNeXt: (dict(depth=50, groups=4, base_width=4, base_channels=16, stem_channels=16), [
        (dict(depth=18), 'depth'), (dict(depth='50'), 'depth'),
        (dict(groups=0), 'groups'), (dict(groups=-4), 'groups'), (dict(groups='4'), 'groups'),
        (dict(groups=NAN), 'groups'), (dict(base_width=0), 'base_width'),
        (dict(base_width=-4), 'base_width'), (dict(base_width='4'), 'base_width'),
        (dict(dynamic_positions=('E',)), 'dynamic_positions'),
        (dict(output_size='fixed'), 'output_size'), (dict(min_feature_size=0), 'min_feature_size'),
        (dict(permutation=dict(stride=(1, 2, 5, 2))), 'stride=5'),
        (dict(num_stages=5), 'num_stages'), (dict(base_channels=0), 'base_channels'),
        (dict(style='caffe'), 'style'), (dict(norm_cfg=dict(type='GN', num_groups=8)), 'norm_cfg'),
    ]),
    CADVGG: (dict(output_stride=2, base_channels=8), [
        (dict(output_stride=8), 'output_stride'), (dict(output_stride=3), 'output_stride'),
        (dict(output_stride='2'), 'output_stride'), (dict(output_stride=-2), 'output_stride'),
        (dict(output_stride=NAN), 'output_stride'),
        (dict(execution_mode='masked'), 'execution_mode'),
        (dict(execution_mode=1), 'execution_mode'),
        (dict(chunk_rows=0), 'chunk_rows'), (dict(chunk_rows=-1), 'chunk_rows'),
        (dict(chunk_rows='16'), 'chunk_rows'), (dict(chunk_rows=NAN), 'chunk_rows'),
        (dict(output_stride=4, d2net_pool3=True), 'd2net_pool3'),
        (dict(base_channels=0), 'base_channels'), (dict(base_channels='8'), 'base_channels'),
        (dict(base_channels=-8), 'base_channels'), (dict(base_channels=NAN), 'base_channels'),
        (dict(checkpoint='hed'), 'base_channels'),
        (dict(weights_source='caffe'), 'weights_source'),
        (dict(mask_source=dict(type='LearnedMask')), 'learned'),
        (dict(mask_source=dict(type='NoSuchMask')), 'mask_source'),
        (dict(mask_source='RandomMask'), 'mask_source'), (dict(mask_source=None), 'mask_source'),
        (dict(mask_source=dict(type='RandomMask', keep_ratio=NAN)), 'keep_ratio'),
        (dict(mask_source=dict(type='RandomMask', keep_ratio=1.5)), 'keep_ratio'),
        (dict(mask_source=dict(type='RandomMask', keep_ratio=-0.1)), 'keep_ratio'),
        (dict(mask_source=dict(type='RandomMask', keep_ratio='0.3')), 'keep_ratio'),
        (dict(mask_source=dict(type='RandomMask', seed='x')), 'seed'),
        (dict(mask_source=dict(type='RandomMask', seed=NAN)), 'seed'),
        (dict(mask_source=dict(type='SiftKeypointMask', output_stride=1)), 'output_stride'),
        (dict(mask_source=dict(type='SiftKeypointMask', dilations=(4, 51))), 'dilations'),
        (dict(mask_source=dict(type='SiftKeypointMask', dilations=(-5, 51))), 'dilations'),
        (dict(mask_source=dict(type='SiftKeypointMask', dilations=('5', 51))), 'dilations'),
        (dict(mask_source=dict(type='SiftKeypointMask', dilations=(25, ))), 'dilations'),
        (dict(mask_source=dict(type='SiftKeypointMask', num_keypoints=0)), 'num_keypoints'),
        (dict(mask_source=dict(type='SiftKeypointMask', num_keypoints='512')), 'num_keypoints'),
        (dict(mask_source=dict(type='SiftKeypointMask', num_keypoints=NAN)), 'num_keypoints'),
        (dict(mask_source=dict(type='SiftKeypointMask', mean_bgr=(1, 2))), 'mean_bgr'),
    ]),
}
