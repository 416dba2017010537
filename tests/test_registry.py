"""`import mmdyn` makes every module buildable from mmdet- and mmseg-scoped configs."""
import pytest
from mmengine.registry import DefaultScope

import mmdyn  # noqa: F401


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_every_mmdyn_module_resolves_in_both_scopes(scope):
    import importlib
    registry = importlib.import_module(f'{scope}.registry')
    with DefaultScope.overwrite_default_scope(scope):
        backbone = registry.MODELS.build(dict(type='LASResNet', depth=18, init_cfg=None))
        assert type(backbone).__name__ == 'LASResNet'
        loss = registry.MODELS.build(dict(type='FlopsRatioLoss', target=0.3))
        assert loss.final_target == 0.3
        for name in ('DynFasterRCNN', 'DynRetinaNet', 'DynMaskRCNN', 'DynEncoderDecoder',
                     'DynImageClassifier', 'ITDResNet', 'ITDResNeXt'):
            assert registry.MODELS.get(name) is not None, name
        for name in ('TemperatureHook', 'SparsityTargetHook'):
            assert registry.HOOKS.build(dict(type=name)) is not None
        assert registry.METRICS.build(dict(type='SparsityMetric')) is not None


def test_mmpretrain_scope_builds_mmdyn_backbones_in_its_classifier():
    """ImageClassifier (GAP + linear head) with mmdyn backbones under
    default_scope='mmpretrain'; hooks and SparsityMetric resolve there too."""
    import torch
    from mmpretrain import registry
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        for backbone, channels in ((dict(type='ITDResNet', depth=18), 512),
                                   (dict(type='LASResNet', depth=18), 512)):
            model = registry.MODELS.build(dict(
                type='DynImageClassifier', sparsity_loss=None,
                backbone=dict(**backbone, out_indices=(3, ), init_cfg=None),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(type='LinearClsHead', num_classes=10, in_channels=channels)))
            assert type(model.backbone).__name__ == backbone['type']
            model.eval()
            with torch.no_grad():
                assert model(torch.zeros(2, 3, 32, 32), mode='tensor').shape == (2, 10)
        assert registry.HOOKS.build(dict(type='RandomOptionHook',
                                         space=dict(stride=(1, 2)))) is not None
        assert registry.METRICS.build(dict(type='SparsityMetric')) is not None


def test_every_registered_dynamic_backbone_is_in_the_shared_tables():
    """A new dynamic backbone must join the tables the deployment, mixed-precision,
    in-place conversion and bad-input tests run over (docs/design.md, adding a
    backbone)."""
    from mmengine.registry import MODELS

    from backbone_table import BAD_ARGUMENTS, CASES
    from mmdyn.models.backbones.dynamic import DynamicBackboneMixin
    registered = {cls for cls in MODELS.module_dict.values()
                  if isinstance(cls, type) and issubclass(cls, DynamicBackboneMixin)
                  and cls.__module__.startswith('mmdyn.')}
    assert registered, 'no dynamic backbone registered'
    assert not registered - {case.cls for case in CASES}, 'missing from backbone_table.CASES'
    assert not registered - set(BAD_ARGUMENTS), 'missing from backbone_table.BAD_ARGUMENTS'
