"""The learning study (issue 13): ink counts against hand-counted pixels, the static
model's multiply-adds against mmdyn's records, bad inputs, and a CI-sized study that
trains a static and a LAS ResNet-18 on the real digits and checks that both learn and
that the LAS masks prefer ink."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import mmdyn  # noqa: F401
from mmdyn.analysis import learning
from mmdyn.analysis.complexity import backbone_conv_macs
from mmdyn.datasets.digits_fixture import build_digits_fixture
from mmdyn.ops import BlockRecord, PatchGrid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis'))
import learning_study  # noqa: E402
from e2e_helpers import run  # noqa: E402


def record(mask, patch, name='layer1.0'):
    mask = torch.tensor(mask, dtype=torch.float32)
    rows, cols = mask.shape[-2:]
    return BlockRecord(name, mask, mask.mean((1, 2, 3)), 1.0, mask.sum((1, 2, 3)),
                       PatchGrid(rows * patch, cols * patch, patch))


class Records:
    def __init__(self, *blocks):
        self.blocks = list(blocks)


def test_ink_counts_match_hand_counted_pixels():
    # 8x8 image, 2x2 patch grid of 4x4-pixel patches on a 4x4 map (patch 2 -> x2 on input)
    image = np.zeros((1, 3, 8, 8), np.uint8)
    image[0, :, 1:3, 1:7] = 200  # 12 ink pixels: 6 in the top-left patch, 6 top-right
    image[0, :, 6, 0] = 128      # at the threshold: not ink
    ink = learning.ink_map(torch.from_numpy(image))
    assert ink.sum() == 12
    counts = {}
    # top-left patch selected; a second block (layer2) with two groups
    learning.add_ink_counts(counts, Records(
        record([[[[1, 0], [0, 0]]]], 2),
        record([[[[1, 1], [0, 0]], [[0, 0], [0, 1]]]], 2, 'layer2.0')), ink)
    # layer1: ink selected 6 of 12; background selected 16 - 6 = 10 of 52
    assert counts['layer1'] == [6, 12, 10, 52]
    # layer2 group 0: top half, 12 ink + 20 background; group 1: bottom-right, 0 + 16
    assert counts['layer2'] == [12, 24, 36, 104]
    assert counts['layer1.0'] == counts['layer1'] and counts['layer2.0'] == counts['layer2']
    summary = learning.ink_preference(counts)
    assert summary['layer1']['ink_rate'] == pytest.approx(0.5)
    assert summary['layer1']['background_rate'] == pytest.approx(10 / 52)
    assert summary['layer1']['preference'] == pytest.approx(0.5 / (10 / 52))
    assert summary['layer2']['preference'] == pytest.approx(0.5 / (36 / 104))


def test_ink_preference_edge_cases():
    summary = learning.ink_preference({'a': [3, 4, 0, 10], 'b': [0, 4, 0, 10],
                                       'c': [0, 0, 2, 10]})
    assert summary['a']['preference'] == math.inf
    assert math.isnan(summary['b']['preference'])
    assert math.isnan(summary['c']['ink_rate'])


def test_static_macs_from_flop_analyzer_equal_las_dense_records():
    """The study compares the static model's conv MACs (mmengine's FlopAnalyzer on
    mmpretrain's ResNet-18) with the dynamic models' executed MACs (mmdyn's records):
    both must count the same network the same way."""
    init_default_scope('mmpretrain')
    static = MODELS.build(dict(type='ResNet', depth=18, out_indices=(3, )))
    las = MODELS.build(dict(type='LASResNet', depth=18, granularity=(4, 2, 1, 1),
                            out_indices=(3, ), init_cfg=None))
    las.eval()
    with torch.no_grad():
        las(torch.zeros(1, 3, 64, 64))
    assert backbone_conv_macs(static, (64, 64)) == las.records.dense_flops
    assert static.training  # restored


def test_every_study_config_builds_and_names_its_target():
    for method, (config, _, target) in learning_study.METHODS.items():
        cfg = Config.fromfile(str(learning_study.CONFIGS / config))
        assert cfg.train_cfg.max_epochs == 20 and cfg.train_dataloader.batch_size == 64
        if target is None:
            assert 'sparsity_loss' not in cfg.model
        else:
            assert cfg.model.sparsity_loss.target == target


def test_run_options_keep_the_val_pass_unless_asked():
    default = learning_study.run_options(15, Path('data'))
    assert default['train_cfg.val_interval'] == 15 and 'train_cfg.val_begin' not in default
    assert learning_study.run_options(15, Path('data'), train_val=False)[
        'train_cfg.val_begin'] == 16  # mmengine validates at the last epoch from val_begin


def test_cfg_options_reach_every_config_and_the_training_command_line():
    """``--cfg-options`` change each method's config alike (applied last), and the
    values train.py gets on its command line read back as the same values."""
    import argparse
    from mmengine.config import DictAction
    extra = {'model.backbone.base_channels': 32, 'model.backbone.granularity': (4, 2, 1, 1),
             'model.head.topk': [1], 'train_cfg.max_epochs': 3}
    options = learning_study.run_options(15, Path('data'), extra=extra)
    assert options['train_cfg.max_epochs'] == 3  # the user's value wins
    cfg = learning_study.load_config('las-t05', 15, extra=extra)
    assert cfg.model.backbone.base_channels == 32
    assert tuple(cfg.model.backbone.granularity) == (4, 2, 1, 1)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    texts = [f'{k}={v}' for k, v in extra.items()]  # as train() writes them
    assert parser.parse_args(['--cfg-options', *texts]).cfg_options == extra


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        learning_study.main(['--data-root', str(tmp_path / 'missing' / 'x'), '--methods',
                             'static', '--seeds', '0'])
    half = tmp_path / 'half'
    (half / 'meta').mkdir(parents=True)
    (half / 'meta' / 'info.json').write_text('{"size": 64}')
    with pytest.raises(FileNotFoundError, match="lacks .*'train'"):
        learning_study.main(['--data-root', str(half)])
    small = tmp_path / 'digits-16'
    build_digits_fixture(str(small), size=16)
    with pytest.raises(SystemExit):
        learning_study.main(['--data-root', str(small)])
    for epochs in ('0', '1'):
        with pytest.raises(SystemExit):
            learning_study.main(['--epochs', epochs])
    cfg = learning_study.load_config('las-t05', 20)
    init_default_scope('mmpretrain')
    for target in (0.0, 1.5, -0.3):
        cfg.model.sparsity_loss.target = target
        with pytest.raises(ValueError, match=r'target must be a number in \(0, 1\]'):
            MODELS.build(cfg.model)
    static = learning_study.load_config('static', 20)
    static.model.type = 'DynImageClassifier'
    with pytest.raises(TypeError, match='needs a dynamic backbone'):
        MODELS.build(static.model)
    with pytest.raises(KeyError, match='NoSuchResNet'):
        cfg.model.sparsity_loss.target = 0.5
        cfg.model.backbone.type = 'NoSuchResNet'
        MODELS.build(cfg.model)


@pytest.mark.slow
def test_ci_sized_study_learns_and_masks_prefer_ink(tmp_path):
    """A static and a LAS-ResNet-18 (t = 0.5) trained on the digits with the study's
    schedule shortened to 15 epochs (seed 0; at 10 epochs the masks had not yet made a
    stage-level ink choice).
    Bands (wide, so the test never flakes; chance is 10 %): both above 80 % top-1; the
    LAS FLOPs ratio within 0.5 +- 0.15 and its mean activation rate in (0.15, 0.8) (the
    FLOPs ratio counts the static stem and each block's halo, so activation sits below
    it); ink preference above 1 in at least one stage. ``--no-train-val``: the trainings
    skip their val-split pass, which none of these checks reads (the study evaluates the
    test split). ``--cfg-options``: both networks at half width (a quarter of the
    multiply-adds), the same for training, evaluation, timing and tools/test.py."""
    epochs = 15
    work, data = tmp_path / 'study', tmp_path / 'digits-64'
    build_digits_fixture(str(data), size=64)
    half_width = ['model.backbone.base_channels=32', 'model.backbone.stem_channels=32',
                  'model.head.in_channels=256']
    learning_study.main(['--work-dir', str(work), '--data-root', str(data),
                         '--methods', 'static', 'las-t05',
                         '--seeds', '0', '--epochs', str(epochs), '--jobs', '2',
                         '--threads', '2', '--latency-repeats', '2', '--no-train-val',
                         '--cfg-options', *half_width])
    study = learning.read_json(str(work / 'study.json'))
    rows = {r['method']: r for r in study['rows']}
    assert rows['static']['accuracy'] > 80 and rows['las-t05']['accuracy'] > 80
    las = rows['las-t05']
    assert abs(las['flops_ratio'] - 0.5) < 0.15
    assert 0.15 < las['activation_rate'] < 0.8
    assert las['gmacs'] < rows['static']['gmacs']
    stages = [v for k, v in las['ink_preference'].items() if '.' not in k and not math.isnan(v)]
    assert max(stages) > 1
    assert (work / 'accuracy_vs_gmacs.png').stat().st_size > 0
    assert list((work / 'overlays' / 'las-t05').glob('layer1.*.png'))
    assert study['latency']['static']['ratio'] == 1.0
    for method in ('static', 'las-t05'):  # --no-train-val: no val-split pass ran
        log = (work / method / 'seed0' / 'train.log').read_text()
        assert 'Epoch(train)' in log and 'Epoch(val)' not in log
    # tools/test.py on the same checkpoint (mmengine's test loop, the config's evaluators)
    # reports the study's own evaluation
    out = run('tools/test.py', learning_study.CONFIGS / learning_study.METHODS['las-t05'][0],
              work / 'las-t05' / 'seed0' / f'epoch_{epochs}.pth', '--work-dir', tmp_path / 'test',
              '--cfg-options', f'test_dataloader.dataset.data_root={data}', *half_width)
    reported = float(out.split('accuracy/top1: ')[1].split()[0])
    assert reported == pytest.approx(las['accuracy'], abs=1e-3)
    # a rerun resumes: nothing is trained or evaluated again
    before = (work / 'las-t05' / 'seed0' / 'eval.json').stat().st_mtime
    learning_study.main(['--work-dir', str(work), '--data-root', str(data),
                         '--methods', 'static', 'las-t05', '--seeds', '0',
                         '--epochs', str(epochs), '--no-latency', '--cfg-options', *half_width])
    assert (work / 'las-t05' / 'seed0' / 'eval.json').stat().st_mtime == before
