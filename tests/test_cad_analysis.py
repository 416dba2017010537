"""CAD-ResNet analysis: level maps, level overlays, the mIoU-vs-MACs sweep and its CLI."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import MODELS

from e2e_helpers import run, run_in_process
from mmdyn.analysis.cad import (default_settings, draw_levels, level_fractions, level_map,
                                plot_miou_vs_macs, save_level_overlays, sweep_masks)
from mmdyn.datasets import build_cityscapes_fixture
from mmdyn.models.backbones import CADResNet
from mmdyn.ops.multires import step_levels

SIZE = (64, 128)          # fixture and test images (H, W)


def tiny_cad_config(path, data_root, mask_source="dict(type='EdgeMask', threshold=0.95)",
                    size=SIZE):
    """A CAD-ResNet-50 + small FCN head mmseg config on the Cityscapes fixture (test
    images resized to ``size``), written out in full: it depends on no config of this
    repository."""
    path.write_text(f'''
custom_imports = dict(imports=['mmdyn'], allow_failed_imports=False)
default_scope = 'mmseg'
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'WARNING'
load_from = None
resume = False
norm_cfg = dict(type='BN', requires_grad=True)
data_root = '{data_root}'
model = dict(
    type='DynEncoderDecoder', sparsity_loss=None,
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255),
    backbone=dict(type='CADResNet', depth=50, init_cfg=None, norm_cfg=norm_cfg,
                  mask_source={mask_source}),
    decode_head=dict(type='FCNHead', in_channels=2048, in_index=3, channels=16, num_convs=1,
                     concat_input=False, dropout_ratio=0.1, num_classes=19,
                     norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                      loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({size[1]}, {size[0]}), keep_ratio=True),
    dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CityscapesDataset', data_root=data_root,
                 data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),
                 dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
''')
    return path


@pytest.fixture(scope='module')
def cityscapes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cad_analysis')
    data = build_cityscapes_fixture(tmp / 'cityscapes', num_images_per_split=2, size=SIZE)
    return tmp, data


# -- level maps ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def backbone32():
    torch.manual_seed(0)
    net = CADResNet(50, base_output_stride=32, init_cfg=None,
                    mask_source=dict(type='FullResolutionMask'))
    return net.eval()


def _expected_levels(keep1, keep2, height, width):
    """Levels by hand: a 2x2 block off at step 1 -> level 1; a 4x4 block off at step 2
    whose four 2x2 blocks were all off at step 1 -> level 2."""
    batch = keep1.shape[0]
    levels = np.zeros((batch, height, width), np.int64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                if not keep1[b, y // 2, x // 2]:
                    levels[b, y, x] = 1
                    by, bx = y // 4, x // 4
                    quad = keep1[b, 2 * by:2 * by + 2, 2 * bx:2 * bx + 2]
                    if not keep2[b, by, bx] and not quad.any():
                        levels[b, y, x] = 2
    return levels


def test_level_map_of_external_masks_two_steps(backbone32):
    # 48x80 input -> 6x10 map on the output-stride-8 grid; step grids 3x5 and 2x3
    generator = torch.Generator().manual_seed(3)
    keep1 = torch.rand(2, 3, 5, generator=generator) > 0.5
    keep1[0, :2, :2] = False                      # a full 4x4 block that step 2 can take
    keep1[1] = True
    keep1[1, 2, 4] = False      # bottom-right corner: its 4x4 block is cut by the map edge
    keep2 = torch.zeros(2, 2, 3, dtype=torch.bool)
    keep2[0, 0, 1] = True
    backbone32.set_masks([keep1, keep2])
    try:
        with torch.no_grad():
            backbone32(torch.randn(2, 3, 48, 80))
    finally:
        backbone32.set_masks(None)
    levels = level_map(backbone32.records)
    expected = _expected_levels(keep1.numpy(), keep2.numpy(), 6, 10)
    assert levels.shape == (2, 6, 10) and levels.dtype == np.int64
    np.testing.assert_array_equal(levels, expected)
    assert (levels[0, :4, :4] == 2).all() and (levels == 2).any()
    # the corner's 2x2 block is its 4x4 block's only one inside the map: level 2
    assert (levels[1, 4:, 8:] == 2).all() and (levels[1] == 2).sum() == 4
    assert (levels[1] == 1).sum() == 0
    assert level_map(backbone32).tolist() == levels.tolist()      # the backbone itself
    # the executed cells are those of the rebuilt map
    cells = [sum(((levels[b] == lv) & (np.arange(6)[:, None] % 2 ** lv == 0)
                  & (np.arange(10)[None] % 2 ** lv == 0)).sum() for lv in (0, 1, 2))
             for b in range(2)]
    rate = backbone32.records.blocks[-1].activation_rate
    assert rate.tolist() == pytest.approx([c / 60 for c in cells])
    fractions = level_fractions(levels[0])
    assert sum(fractions.values()) == pytest.approx(1.0)


def test_level_map_one_step_edges_and_extremes():
    torch.manual_seed(0)
    net = CADResNet(50, init_cfg=None,
                    mask_source=dict(type='EdgeMask', threshold=0.5, dilation=1)).eval()
    x = torch.zeros(1, 3, 32, 64)
    x[:, :, 16:, 40:] = 2.0                       # one bright corner: edges along its border
    with torch.no_grad():
        net(x)
    levels = level_map(net.records)
    keep = net.mask_source(x, torch.zeros(1, 1, 4, 8), [(2, 4)])[0]
    assert 0 < int(keep.sum()) < keep.numel()
    np.testing.assert_array_equal(
        levels, step_levels(torch.zeros(1, 4, 8, dtype=torch.long), keep, 1).numpy())
    assert set(np.unique(levels).tolist()) == {0, 1}       # one adaptive step: no 4x4 cells
    for source, value in (('FullResolutionMask', 0), ('DownsampleAllMask', 1)):
        net.mask_source = MODELS.build(dict(type=source))
        with torch.no_grad():
            net(x)
        assert (level_map(net.records) == value).all()


def test_level_map_rejects_other_records():
    from mmdyn.ops import BlockRecord, ForwardRecord, PatchGrid
    block = BlockRecord('layer1.0', torch.ones(1, 1, 2, 2), torch.ones(1), 1.0, torch.ones(1),
                        PatchGrid(16, 16, 8))
    with pytest.raises(ValueError, match='CAD-ResNet'):
        level_map(ForwardRecord({}, [block]))
    with pytest.raises(TypeError, match='CAD-ResNet'):
        level_map(torch.nn.Conv2d(1, 1, 1))


# -- overlays -----------------------------------------------------------------------------

def test_overlay_png_has_the_image_size(tmp_path):
    levels = np.zeros((4, 8), np.int64)
    levels[:, 4:] = 2                  # right half: two 4x4 cells
    levels[:2, :2] = 1                 # one 2x2 cell
    image = np.full((32, 64, 3), 100, np.uint8)
    out = save_level_overlays(image, levels, str(tmp_path / 'sub' / 'levels.png'), label='')
    written = cv2.imread(out)
    assert written.shape == image.shape
    drawn = draw_levels(image, levels)
    assert drawn.shape == image.shape
    assert (drawn[20, 20] != 100).any()                     # full resolution: tinted
    assert (drawn[5, 5] == 100).all()                       # inside a 2x2 cell: untouched
    assert tuple(drawn[0, 5]) == (255, 220, 0)              # its outline (16 px)
    assert tuple(drawn[15, 8]) == (255, 220, 0)
    assert tuple(drawn[10, 32]) == (0, 200, 255)            # a 4x4 cell's outline (32 px)
    assert (drawn[10, 40] == 100).all()
    # an image twice as large, resized after inference: stride 16
    big = draw_levels(np.full((64, 128, 3), 100, np.uint8), levels, stride=16)
    assert big.shape == (64, 128, 3) and tuple(big[0, 10]) == (255, 220, 0)
    with pytest.raises(ValueError, match='cover'):
        draw_levels(np.zeros((40, 64, 3), np.uint8), levels)


def test_plot(tmp_path):
    rows = [dict(name='OS16', mask_source=dict(type='DownsampleAllMask'), gmacs=1.0, miou=50.0),
            dict(name='edge t=1', mask_source=dict(type='EdgeMask'), gmacs=2.0, miou=55.0),
            dict(name='edge t=0.5', mask_source=dict(type='EdgeMask'), gmacs=2.5, miou=57.0),
            dict(name='random', mask_source=dict(type='RandomMask'), gmacs=2.2, miou=52.0),
            dict(name='OS8', mask_source=dict(type='FullResolutionMask'), gmacs=3.0, miou=58.0)]
    path = plot_miou_vs_macs(rows, str(tmp_path / 'plot.png'))
    assert cv2.imread(path) is not None


# -- the sweep on the Cityscapes fixture ----------------------------------------------------

def _check_rows(rows, names):
    assert [r['name'] for r in rows] == names
    for row in rows:
        assert 0.0 <= row['miou'] <= 100.0 and np.isfinite(row['miou'])
    gmacs = {r['name']: r['gmacs'] for r in rows}
    edges = [r['gmacs'] for r in rows if r['mask_source']['type'] == 'EdgeMask']
    assert edges and all(gmacs['OS16'] < g <= gmacs['OS8'] for g in edges), gmacs
    assert edges == sorted(edges)                      # lower threshold, more full resolution
    assert gmacs['OS8'] == pytest.approx(rows[0]['gmacs_dense'])
    assert {r['gmacs_dense'] for r in rows} == {rows[0]['gmacs_dense']}
    # one random init for every setting: all blocks kept is the OS8 network
    for row in rows:
        if row['activation_rate'] == 1.0:
            assert row['miou'] == rows[-1]['miou'] and row['gmacs'] == gmacs['OS8']


def test_sweep_in_process(cityscapes):
    tmp, data = cityscapes
    small = (SIZE[0] // 2, SIZE[1] // 2)             # a quick run: 32x64 network inputs
    config = tiny_cad_config(tmp / 'cad_tiny.py', data['root'], size=small)
    settings = default_settings(thresholds=(0.95,))     # the full sweep: the CLI test
    rows = sweep_masks(str(config), None, settings, tmp / 'sweep')
    _check_rows(rows, ['OS16', 'edge t=0.95', 'OS8'])
    assert rows[0]['activation_rate'] < rows[1]['activation_rate'] <= rows[-1]['activation_rate']
    assert rows[-1]['activation_rate'] == pytest.approx(1.0)
    # Guarantee 2: the multiply-adds of mmseg's strided (OS16) and dilated (OS8) ResNets
    from mmseg.models.backbones import ResNetV1c

    from mmdyn.analysis.complexity import dense_part_flops
    for name, strides, dilations in (('OS16', (1, 2, 2, 1), (1, 1, 1, 2)),
                                     ('OS8', (1, 2, 1, 1), (1, 1, 2, 4))):
        net = ResNetV1c(depth=50, strides=strides, dilations=dilations, contract_dilation=True)
        macs = sum(dense_part_flops(net, small).values()) / 1e9
        assert next(r['gmacs'] for r in rows if r['name'] == name) == pytest.approx(macs)
    path = plot_miou_vs_macs(rows, str(tmp / 'sweep' / 'miou_vs_macs.png'))
    assert cv2.imread(path) is not None


@pytest.mark.slow
def test_cli_sweep_and_masks(cityscapes):
    tmp, data = cityscapes
    config = tiny_cad_config(tmp / 'cad_cli.py', data['root'])
    out = tmp / 'cli_sweep'
    printed = run('tools/analysis/cad_analysis.py', 'sweep', config, 'none', '--thresholds',
                  '2.5', '1.5', '0.95', '0.35', '--random-keep', '0.5', '--out-dir', out)
    assert 'miou_vs_macs.png' in printed
    result = json.loads((out / 'sweep.json').read_text())
    rows = result['rows']
    _check_rows(rows, ['OS16', 'edge t=2.5', 'edge t=1.5', 'edge t=0.95', 'edge t=0.35',
                       'random keep=0.5', 'OS8'])
    assert result['checkpoint'] is None
    assert cv2.imread(str(out / 'miou_vs_macs.png')) is not None

    # the network sees 32x64 inputs; the overlays have the 64x128 images' size
    small = tiny_cad_config(tmp / 'cad_cli_small.py', data['root'],
                            size=(SIZE[0] // 2, SIZE[1] // 2))
    masks_dir = tmp / 'cli_masks'
    images = data['val_images']
    # the tool's second call (the first, 'sweep', was a subprocess) runs in-process
    printed = run_in_process('tools/analysis/cad_analysis.py', 'masks', small, 'none',
                             *images, '--out-dir', masks_dir,
                             '--cfg-options', 'model.backbone.mask_source.threshold=0.35')
    assert printed.count('full res') == len(images)
    for image in images:
        written = cv2.imread(str(masks_dir / f'{Path(image).stem}.png'))
        assert written is not None and written.shape == SIZE + (3,)
