"""Every config in configs/ parses and builds its model (offline: no pretrained)."""
import re
from pathlib import Path

import pytest
import torch
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
    if path.parent.name == 'd2net':
        return check_hpatches_config(Config.fromfile(str(path)), path.stem)
    cfg = offline(Config.fromfile(str(path)))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    if path.parent.name == 'demo' and '_las-' not in path.name:
        assert type(model.backbone).__name__ == 'ResNet'  # the demo's static twin
        return
    if path.parent.name == 'learning_study' and path.name.startswith('resnet'):
        # the study's static reference: mmpretrain's own ResNet, not an mmdyn backbone
        assert type(model).__name__ == 'ImageClassifier'
        assert type(model.backbone).__module__.startswith('mmpretrain')
        check_digits_classifier(model, path.stem)
        return
    assert type(model).__name__.startswith('Dyn')
    hooks = {h['type'] for h in cfg.custom_hooks}
    metrics = [m['type'] for m in cfg.val_evaluator]
    assert 'SparsityMetric' in metrics and len(metrics) == 2
    check = BACKBONE_CHECKS.get(type(model.backbone).__name__)
    assert check is not None, f'no config check for {type(model.backbone).__name__}'
    check(model, cfg, hooks, path.stem)
    if path.parent.name == 'learning_study':
        check_digits_classifier(model, path.stem)


def check_hpatches_config(cfg, stem):
    """A D2-Net / CAD-VGG config: HPatches in mmengine's test loop, the backbone (with
    the VGG16 weights it names, local files only) as its name says."""
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'HPatchesFeatureModel'
    assert cfg.test_dataloader.dataset.type == 'HPatchesDataset'
    assert cfg.test_evaluator.type == 'HPatchesMMAMetric'
    backbone = model.extractor.backbone
    assert type(backbone).__name__ == 'CADVGG' and backbone.weights_source == 'hed'
    stride, keypoints, dilations = re.fullmatch(
        r'hpatches_cad-vgg16-os(\d)-sift(\d+)-d([\d-]+)', stem).groups()
    assert backbone.output_stride == int(stride)
    assert model.extractor.num_keypoints == backbone.mask_source.num_keypoints == int(keypoints)
    assert backbone.mask_source.dilations == tuple(int(d) for d in dilations.split('-'))


def check_digits_classifier(model, stem):
    """A digits classifier: 10 classes, and a forward at the image size in its name."""
    assert model.head.num_classes == 10 and '_digits-' in stem
    size = int(stem.split('_digits-')[1].split('px')[0])
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size), mode='tensor').shape == (2, 10)


def check_scheduled_target(model, hooks, stem):
    """LAS / SAR: temperature and target hooks; the name gives the target and depth."""
    assert {'TemperatureHook', 'SparsityTargetHook'} <= hooks
    assert f't0{int(model.sparsity_loss.final_target * 10)}' in stem
    assert f'-r{model.backbone.depth}' in stem


def check_las_config(model, cfg, hooks, stem):
    check_scheduled_target(model, hooks, stem)
    backbone = model.backbone
    granularity = ''.join(str(blocks[0]) for blocks in backbone.granularity)
    assert f'-s{granularity}-' in stem


def check_sar_config(model, cfg, hooks, stem):
    check_scheduled_target(model, hooks, stem)
    backbone = model.backbone
    assert type(model.sparsity_loss).__name__ == 'RefineRateLoss'
    setting = cfg.model.backbone.sar_setting
    assert f'-{setting.lower()}-' in stem
    parsed = parse_sar_setting(setting)
    assert backbone.sar_groups == [parsed['groups']] * 3
    assert backbone.base_scale == [parsed['base_scale']] * 3


def check_cad_config(model, cfg, hooks, stem):
    """CAD-ResNet: the name encodes depth, mask source and base output stride; learned
    masks train with KeepRatioLoss at a fixed target and a Gumbel temperature, edge masks
    have neither; the detectors' anchors and RoI extractors use the true strides."""
    backbone = model.backbone
    source = type(backbone.mask_source).__name__
    assert f'_cad-r{backbone.depth}-' in stem
    assert f'-os{backbone.base_output_stride}to8' in stem
    assert 'SparsityTargetHook' not in hooks  # CAD's keep-ratio target is fixed
    if source == 'LearnedMask':
        assert type(model.sparsity_loss).__name__ == 'KeepRatioLoss'
        assert f'-learned-t0{round(model.sparsity_loss.final_target * 10)}-' in stem
        assert hooks == {'TemperatureHook'}
    else:
        assert source == 'EdgeMask'
        assert model.sparsity_loss is None and not hooks
        assert f'-edge{round(backbone.mask_source.threshold * 100):03d}-' in stem
    if not hasattr(model, 'neck'):
        assert '-d8-' in stem
        return
    # Detection: run the backbone and neck on a 128 px image, read each FPN level's
    # stride and compare with the anchor generator's and the RoI extractors' strides.
    model.eval()
    with torch.no_grad():
        levels = model.extract_feat(torch.zeros(1, 3, 128, 128))
    strides = [128 // level.shape[-1] for level in levels]
    head = model.rpn_head if hasattr(model, 'rpn_head') else model.bbox_head
    assert [s[0] for s in head.prior_generator.strides] == strides
    # the standard per-level anchor sizes (RPN 32..512, RetinaNet 32..512 per octave)
    assert [round(size) for size in head.prior_generator.base_sizes] == \
        [4 * 2 ** i if hasattr(model, 'rpn_head') else 8 * 2 ** i for i in range(5)]
    if hasattr(model, 'roi_head'):
        assert strides[:4] == [4, 8, 8, 8]
        extractors = [model.roi_head.bbox_roi_extractor]
        if model.roi_head.with_mask:
            extractors.append(model.roi_head.mask_roi_extractor)
        for extractor in extractors:
            assert list(extractor.featmap_strides) == strides[:4]


def check_itd_config(model, cfg, hooks, stem):
    """ITD-ResNet: no gate, so no sparsity loss; the name gives the depth (``rx`` for
    ResNeXt) and, for ROF configs, the attribute RandomOptionHook draws; detectors
    resample every level to the nominal stride under any permutation (anchors and RoI
    extractors stay valid), segmentors and classifiers keep the actual sizes."""
    backbone = model.backbone
    assert model.sparsity_loss is None
    arch = 'rx' if type(backbone).__name__ == 'ITDResNeXt' else 'r'
    assert f'itd-{arch}{backbone.depth}' in stem
    assert backbone.dynamic_positions == ('A', 'B', 'C', 'D')
    rof = [h for h in cfg.custom_hooks if h['type'] == 'RandomOptionHook']
    if '-rof-' in stem:
        attribute = stem.split('-rof-')[1].split('_')[0]
        assert len(rof) == 1 and hooks == {'RandomOptionHook'}
        assert list(rof[0]['space']) == [{'size': 'kernel_size'}.get(attribute, attribute)]
    else:
        assert not hooks
    if hasattr(model, 'head'):  # mmpretrain ImageClassifier
        assert backbone.output_size == 'actual'
        assert model.head.num_classes == (10 if '_digits-' in stem else 1000)
        if '_digits-' in stem:
            model.eval()
            backbone.set_permutation(stride=('1/2', 3, 1, 2))
            with torch.no_grad():
                assert model(torch.zeros(2, 3, 32, 32), mode='tensor').shape == (2, 10)
        return
    if hasattr(model, 'decode_head'):
        assert '-d8' in stem and backbone.output_size == 'actual'
        assert [o.stride for o in backbone.default_permutation] == [1, 2, 1, 1]
        return
    assert backbone.output_size == 'nominal'
    head = model.rpn_head if hasattr(model, 'rpn_head') else model.bbox_head
    model.eval()
    for strides in ((2, 3, 1, 4), ('1/2', 1, 3, 2)):
        backbone.set_permutation(stride=strides)
        with torch.no_grad():
            levels = model.extract_feat(torch.zeros(1, 3, 128, 128))
        assert [128 // level.shape[-1] for level in levels] == \
            [s[0] for s in head.prior_generator.strides]
    if hasattr(model, 'roi_head'):
        assert list(model.roi_head.bbox_roi_extractor.featmap_strides) == [4, 8, 16, 32]
def check_sfsi_config(model, cfg, hooks, stem):
    """SFSI-ResNet: the name gives depth, DCN, the loss weight (w002 = 0.02) and a missing
    grid prior; only the temperature is scheduled (fixed loss weight, no target); the
    segmentation configs are dilated to output stride 8."""
    backbone = model.backbone
    assert re.search(rf'(^|_)sfsi-r{backbone.depth}-', stem)
    assert type(model.sparsity_loss).__name__ == 'SFSISparseLoss'
    weight = model.sparsity_loss.loss_weight
    assert f"-w{f'{weight:g}'.replace('.', '')}" in stem  # 0.02 -> w002, 0.1 -> w01
    assert hooks == {'TemperatureHook'}
    blocks = backbone.dynamic_blocks()
    intervals = {block.grid_prior_interval for block in blocks}
    assert intervals == ({None} if '-nogrid' in stem else {11})
    deformable = [block.deformable for block in blocks]
    if '-dcn-' in stem:
        assert not any(deformable[:3]) and all(deformable[3:])
    else:
        assert not any(deformable)
    assert {block.sampling for block in blocks} == {'stochastic'}
    if '-d8-' in stem:
        assert tuple(backbone.strides) == (1, 2, 1, 1)
        assert tuple(backbone.dilations) == (1, 1, 2, 4) and backbone.deep_stem
        assert backbone.contract_dilation


#: one check per backbone type: what a config's name promises about its model
BACKBONE_CHECKS = {
    'LASResNet': check_las_config,
    'SARResNet': check_sar_config,
    'CADResNet': check_cad_config,
    'ITDResNet': check_itd_config,
    'ITDResNeXt': check_itd_config,
    'SFSIResNet': check_sfsi_config,
}
