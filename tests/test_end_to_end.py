"""End-to-end runs of the command-line tools on the offline COCO fixture."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_helpers import ROOT, logged, run, run_in_process, tiny_voc_config
from mmdyn.datasets import build_coco_fixture

CONFIGS = ROOT / 'configs'
LAS_DEMO = CONFIGS / 'demo' / 'faster-rcnn_las-r18-s4421-t07_fpn_demo-fixture.py'
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def fixture_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('e2e')
    data = build_coco_fixture(tmp / 'coco', num_shape_images=4, image_size=128, seed=1)
    root = data['root'].rstrip('/') + '/'
    config = tmp / 'las_tiny.py'
    config.write_text(f'''
_base_ = ['{LAS_DEMO}']
data_root = '{root}'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
         metric='bbox'),
    dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
''')
    return config, tmp, data



def test_train_resume_test_and_visualize(fixture_config):
    config, tmp, data = fixture_config
    work_dir = tmp / 'train'
    run('tools/train.py', config, '--work-dir', work_dir)
    for name in ('iter_2.pth', 'iter_4.pth'):
        assert (work_dir / name).is_file()
    first = logged(work_dir, 'temperature')
    assert sorted(first) == [1, 2, 3, 4]

    # resume from iteration 2 (an mmengine checkpoint: needs the weights_only fix); the
    # tool's second call in this test runs in-process (the first was a subprocess)
    resumed_dir = tmp / 'resumed'
    out = run_in_process('tools/train.py', config, '--work-dir', resumed_dir,
                         '--resume', work_dir / 'iter_2.pth')
    assert 'resumed' in out.lower()
    second = logged(resumed_dir, 'temperature')
    assert sorted(second) == [3, 4]
    for step in (3, 4):
        assert second[step] == first[step]  # the schedule continues exactly
    targets = logged(resumed_dir, 'sparsity_target')
    assert targets[4] == [pytest.approx(0.7)]  # the demo config's final target

    out = run('tools/test.py', config, work_dir / 'iter_4.pth', '--work-dir', tmp / 'test')
    assert 'coco/bbox_mAP' in out and 'sparsity/activation_rate' in out
    assert 'sparsity/backbone_gflops_executed' in out
    # no detection at all (a score threshold above every score): a failed run that says
    # so in its last line, not an mmengine ERROR line in a run that exits 0
    empty = subprocess.run(
        [sys.executable, 'tools/test.py', str(config), str(work_dir / 'iter_4.pth'),
         '--work-dir', str(tmp / 'empty'), '--cfg-options', 'model.test_cfg.rcnn.score_thr=1.1'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert empty.returncode == 1, empty.stderr[-2000:]
    assert 'CocoMetric computed no metric: the model detected nothing' in \
        empty.stderr.strip().splitlines()[-1]

    image = next(Path(data['val_img_dir']).glob('*.jpg'))
    run('tools/analysis/visualize_masks.py', config, work_dir / 'iter_4.pth', image,
        '--out-dir', tmp / 'masks')
    pngs = sorted((tmp / 'masks' / image.stem).glob('*.png'))
    assert len(pngs) == 8 + 1  # ResNet-18 blocks + the mosaic


#: what a rank prints when it aborts in exit-time destructors
EXIT_ABORT = 'terminate called without an active exception'


def free_port() -> str:
    """A free port: an earlier run's may be in TIME_WAIT."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return str(probe.getsockname()[1])


def test_distributed_training_with_two_cpu_processes(fixture_config):
    config, tmp, _ = fixture_config
    work_dir = tmp / 'dist'
    port = free_port()
    env = {**os.environ, 'PYTHON': sys.executable, 'PORT': port, 'OMP_NUM_THREADS': '1'}
    command = ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir),
               '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=3']
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=env)
    if result.returncode != 0 and EXIT_ABORT in result.stderr \
            and (work_dir / 'iter_2.pth').is_file():
        # A rank that finished its work can abort in C++ static destruction at exit (no
        # Python frame left; torch's gloo teardown; seen at 8e5ee42 and later, more
        # often under load): one more run, on a port of its own, must pass.
        env['PORT'] = free_port()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # world size
    assert (work_dir / 'iter_2.pth').is_file()


@pytest.mark.parametrize('config,flags', [
    ('las-r18-s4211-t05_1xb64-20e_digits-64px.py', ['--stages']),
    ('sar-r18-g2s2a2b1-t05_1xb64-20e_digits-64px.py', ['--stages', '--reference']),
], ids=['las', 'sar'])
def test_benchmark_script_writes_json_with_stages(tmp_path, config, flags):
    """The config benchmark's per-stage pass: the stem and every stage of the twin and
    the dynamic backbone (and its reference execution), the stages' FLOPs from the
    records against the twin's per-stage count."""
    out = tmp_path / 'bench.json'
    tool = run if 'las' in config else run_in_process  # one subprocess per tool
    printed = tool('tools/analysis/benchmark_latency.py', CONFIGS / 'learning_study' / config,
                   *flags, '--input', '64', '96', '--rates', '0.5', '--warmup', '0',
                   '--repeats', '1', '--threads', '2', '1', '--out', out)
    assert 'per stage' in printed
    report = json.loads(out.read_text())
    assert [(r['threads'], r['rate']) for r in report['rows']] == [(2, 0.5), (1, 0.5)]
    for row in report['rows']:
        assert set(row['stages']) == {'stem', 'layer1', 'layer2', 'layer3', 'layer4'}
        assert row['stages']['stem']['flops_ratio'] == pytest.approx(1.0)  # static
        stages = [s['flops_ratio'] for k, s in row['stages'].items() if k != 'stem']
        assert all(0 < f <= 1 for f in stages) and min(stages) < 1
        assert all(s['dynamic_s'] > 0 for s in row['stages'].values())
        assert all(('reference_s' in s) == ('--reference' in flags)
                   for s in row['stages'].values())
        assert 0 < row['flops_ratio'] < 1 and row['dynamic_s'] > 0


def test_benchmark_script_measures_in_several_processes(tmp_path):
    """``--processes 2``: the command in two fresh processes, each figure's median, every
    process's report kept."""
    out = tmp_path / 'bench.json'
    printed = run('tools/analysis/benchmark_latency.py',
                  CONFIGS / 'learning_study' / 'las-r18-s4211-t05_1xb64-20e_digits-64px.py',
                  '--input', '64', '96', '--rates', '0.5', '--warmup', '0', '--repeats', '1',
                  '--threads', '1', '--proc', '2', '--out', out)  # an abbreviation too
    assert printed.count('-- process') == 2 and 'median of 2 processes' in printed
    report = json.loads(out.read_text())
    (row,) = report['rows']
    each = [p['rows'][0] for p in report['processes']]
    assert len(each) == 2 and row['flops_ratio'] == each[0]['flops_ratio']
    for key in ('static_s', 'dynamic_s', 'latency_ratio'):
        assert row[key] == pytest.approx((each[0][key] + each[1][key]) / 2)


def test_segmentation_trains_and_reports_miou_with_sparsity(tmp_path):
    """mmseg end to end: the LAS DeepLabv3 VOC config (shrunk to R18 and 128 px crops)
    trains on the offline VOC2012 fixture and evaluates mIoU next to the sparsity."""
    from mmdyn.datasets import build_voc_fixture
    data = build_voc_fixture(tmp_path / 'voc', num_shape_images=4, image_size=128, seed=0)
    base = ROOT / 'configs' / 'las_resnet' / \
        'deeplabv3_las-r50-d8-s4444-t05_4xb4-20k_voc12aug-512x512.py'
    config = tiny_voc_config(tmp_path / 'deeplabv3_las_tiny.py', base, data['data_root'])
    # tools/train.py runs as a subprocess in test_train_resume_test_and_visualize
    out = run_in_process('tools/train.py', config, '--work-dir', tmp_path / 'work')
    assert 'mIoU' in out and 'sparsity/activation_rate' in out
    assert 'loss_sparsity' in out
    assert (tmp_path / 'work' / 'iter_4.pth').is_file()


def test_sparsity_histograms_over_the_validation_set(fixture_config):
    config, tmp, data = fixture_config
    out = tmp / 'histograms'
    run('tools/analysis/sparsity_histograms.py', config, 'none', '--out-dir', out)
    stats = json.loads((out / 'per_image.json').read_text())
    assert len(stats) == data['num_images']['val']
    summary = json.loads((out / 'summary.json').read_text())
    rates = summary['activation_rate']
    assert summary['images'] == len(stats)
    assert 0.0 <= rates['min'] <= rates['median'] <= rates['max'] <= 1.0
    for image in stats:  # random init: masks start dense, plus the gate's cost
        assert image['backbone_flops_executed'] <= 1.01 * image['backbone_flops_dense']
    assert (out / 'histograms.png').stat().st_size > 1000


def test_make_demo_prints_its_table(tmp_path):
    """`make demo`'s program at a tiny size: the static training, the LAS fine-tune from
    its checkpoint, the table with its column explanations, the JSON and the overlays
    with their legend; at 4 iterations the masks cannot have sparsified, and the table
    says so."""
    out = run('-m', 'mmdyn.demo', '--iters', '4', '--work-dir', str(tmp_path))
    assert 'iterations from the static weights' in out and 'columns:' in out
    assert 'too few for them to sparsify' in out
    result = json.loads((tmp_path / 'demo_results.json').read_text())
    static, las = result['rows']
    assert static['latency_ms'] > 0 and las['latency_ms'] > 0
    assert result['latency_ratio'] == pytest.approx(las['latency_ms'] / static['latency_ms'])
    assert las['activation'] > 0.9 and las['gflops'] > 0
    assert (tmp_path / 'static' / 'iter_4.pth').is_file()
    assert any(p.endswith('all_blocks.png') for p in result['overlays'])
