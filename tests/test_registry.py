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
        for name in ('DynFasterRCNN', 'DynRetinaNet', 'DynMaskRCNN', 'DynEncoderDecoder'):
            assert registry.MODELS.get(name) is not None, name
        for name in ('TemperatureHook', 'SparsityTargetHook'):
            assert registry.HOOKS.build(dict(type=name)) is not None
        assert registry.METRICS.build(dict(type='SparsityMetric')) is not None
