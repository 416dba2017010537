"""Every config in configs/ parses and builds its model (offline: no pretrained)."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import mmdyn  # noqa: F401
from mmdyn.models.backbones import parse_sar_setting

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)


def offline(cfg):
    """Drop pretrained weights: nothing can be downloaded here."""
    cfg.model.pop('pretrained', None)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.pop('pretrained', None)
    return cfg


def test_every_framework_is_covered():
    names = {p.name.split('_')[0] for p in CONFIGS}
    assert {'faster-rcnn', 'retinanet', 'mask-rcnn', 'deeplabv3', 'pspnet'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_builds(path):
    cfg = offline(Config.fromfile(str(path)))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    if path.parent.name == 'demo' and '_las-' not in path.name:
        assert type(model.backbone).__name__ == 'ResNet'  # the demo's static twin
        return
    assert type(model).__name__.startswith('Dyn')
    hooks = {h['type'] for h in cfg.custom_hooks}
    assert {'TemperatureHook', 'SparsityTargetHook'} <= hooks
    metrics = [m['type'] for m in cfg.val_evaluator]
    assert 'SparsityMetric' in metrics and len(metrics) == 2
    stem = path.stem
    backbone = model.backbone
    assert f't0{int(model.sparsity_loss.final_target * 10)}' in stem
    assert f'-r{backbone.depth}' in stem
    if type(backbone).__name__ == 'SARResNet':
        assert type(model.sparsity_loss).__name__ == 'RefineRateLoss'
        setting = cfg.model.backbone.sar_setting
        assert f'-{setting.lower()}-' in stem
        parsed = parse_sar_setting(setting)
        assert backbone.sar_groups == [parsed['groups']] * 3
        assert backbone.base_scale == [parsed['base_scale']] * 3
        return
    assert type(backbone).__name__ == 'LASResNet'
    granularity = ''.join(str(blocks[0]) for blocks in backbone.granularity)
    assert f'-s{granularity}-' in stem
