"""Crash and resume, exactly; distributed agreement; tools/test.py with the deployment
steps (fuse_conv_bn, fp16 testing). Tiny configs on the offline fixtures.

Resume: a run SIGKILLed at the start of an iteration mid-epoch (its data batch
loaded, no cleanup) and resumed from its last checkpoint ends bit for bit where the
uninterrupted run ends -- weights, optimizer state, LR schedule, logged losses, the
temperature / target schedules -- on CPU with ``randomness.deterministic``. mmengine
alone is not exact: it does not restore the global torch generator (Gumbel noise,
RoI sampling, dropout); mmdyn's RandomStateHook (added by tools/train.py) does.
Gap left (documented): mmengine's *epoch*-based loop restarts an interrupted epoch
from its first batch; these runs use the iteration-based loop, whose data replay
reproduces the sampler position and the pipeline's random draws.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

import pytest
import torch
from mmengine.config import Config

from e2e_helpers import ROOT, logged, tiny_voc_config
from mmdyn.datasets import build_cityscapes_fixture, build_coco_fixture, build_voc_fixture

pytestmark = pytest.mark.slow
TESTS = ROOT / 'tests'
LAS_DEMO = ROOT / 'configs' / 'demo' / 'faster-rcnn_las-r18-s4421-t07_fpn_demo-fixture.py'
VOC_LAS = ROOT / 'configs' / 'las_resnet' / \
    'deeplabv3_las-r50-d8-s4444-t05_4xb4-20k_voc12aug-512x512.py'
CAD_EDGE = ROOT / 'configs' / 'cad_resnet' / \
    'deeplabv3_cad-r101-d8-edge035-os16to8_4xb2-80k_cityscapes-512x1024.py'
ITERS, CHECKPOINT_AT, KILL_AT = 4, 2, 3  # checkpoint after iteration 2, die in iteration 3

DETERMINISTIC = f'''
custom_imports = dict(imports=['mmdyn', 'reliability_hooks'], allow_failed_imports=False)
randomness = dict(seed=0, deterministic=True)
train_cfg = dict(max_iters={ITERS}, val_interval=1000)
val_cfg = None
val_dataloader = None
val_evaluator = None
default_hooks = dict(checkpoint=dict(by_epoch=False, interval={CHECKPOINT_AT}),
                     logger=dict(interval=1))
log_processor = dict(by_epoch=False, window_size=1)
'''


def tool_env():
    return {**os.environ, 'PYTHONPATH': f'{ROOT}{os.pathsep}{TESTS}', 'OMP_NUM_THREADS': '1'}


def spawn(*args):
    """Start a repository script with this interpreter in the background; its output
    goes to a temporary file (a pipe nobody reads could fill and block it)."""
    log = tempfile.TemporaryFile(mode='w+')
    process = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, text=True,
                               env=tool_env(), stdout=log, stderr=subprocess.STDOUT)
    process.log = log
    return process


def finish(process, timeout=600):
    """Wait for a spawned script; it must succeed."""
    process.wait(timeout=timeout)
    process.log.seek(0)
    output = process.log.read()
    process.log.close()
    assert process.returncode == 0, output[-6000:]
    return output


def tool(*args, check=True, timeout=600):
    env = tool_env()
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_killed_and_resumed(config, tmp, while_resuming=None):
    """(uninterrupted work dir, resumed work dir) of ``config``; ``while_resuming(full
    work dir)`` runs side by side with the resumed run."""
    full, crashed, resumed = tmp / 'full', tmp / 'crashed', tmp / 'resumed'
    hooks = list(Config.fromfile(str(config)).get('custom_hooks') or [])
    crashing = tmp / f'{config.stem}_crashing.py'
    crashing.write_text(f"_base_ = ['{config}']\ncustom_hooks = "
                        f"{[*map(dict, hooks), dict(type='SigkillHook', at_iter=KILL_AT)]!r}\n")
    # the uninterrupted and the crashing run are independent: run them side by side
    uninterrupted = spawn('tools/train.py', config, '--work-dir', full)
    result = tool('tools/train.py', crashing, '--work-dir', crashed, check=False)
    finish(uninterrupted)
    assert result.returncode == -9, 'the run must die by SIGKILL'
    assert (crashed / f'iter_{CHECKPOINT_AT}.pth').is_file()
    assert not (crashed / f'iter_{ITERS}.pth').exists()
    resuming = spawn('tools/train.py', config, '--work-dir', resumed,
                     '--resume', crashed / f'iter_{CHECKPOINT_AT}.pth')
    if while_resuming is not None:
        while_resuming(full)
    finish(resuming)
    return full, resumed


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def assert_bitwise_equal(a, b, where=''):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f'{where}: max abs diff {(a - b).abs().max()}'
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f'{where}[{k}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


def assert_resume_exact(full, resumed, schedule_keys):
    want, got = load(full / f'iter_{ITERS}.pth'), load(resumed / f'iter_{ITERS}.pth')
    diff = max(float((want['state_dict'][k].float() - got['state_dict'][k].float())
                     .abs().max()) for k in want['state_dict'])
    print(f'resume: max abs weight difference {diff}')
    assert_bitwise_equal(want['state_dict'], got['state_dict'], 'state_dict')
    assert_bitwise_equal(want['optimizer'], got['optimizer'], 'optimizer')
    assert_bitwise_equal(want['param_schedulers'], got['param_schedulers'], 'schedulers')
    assert want['meta']['iter'] == got['meta']['iter'] == ITERS
    for key in ['loss', 'lr', *schedule_keys]:
        first, second = logged(full, key), logged(resumed, key)
        assert sorted(second) == list(range(CHECKPOINT_AT + 1, ITERS + 1)), key
        for step in second:
            assert second[step] == first[step], (key, step)  # logged to full precision
    # the resumed iterations are not trivially equal: the losses move
    losses = [logged(full, 'loss')[s][0] for s in range(1, ITERS + 1)]
    assert len(set(losses)) == len(losses)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    return build_coco_fixture(tmp_path_factory.mktemp('rel_coco') / 'coco',
                              num_shape_images=4, image_size=128, seed=1)


def test_detection_resume_after_sigkill_is_exact(coco, tmp_path):
    """Faster R-CNN + LAS-ResNet-18 (the demo config on the COCO fixture): Gumbel masks,
    RoI sampling, LinearLR, temperature and target schedules. (tools/test.py's
    deployment steps run in the segmentation test: fp16 testing of mmdet detectors
    does not run on CPU, mmcv's CPU NMS refuses bf16 boxes; docs/reliability.md.)"""
    root = coco['root'].rstrip('/') + '/'
    config = tmp_path / 'las_det.py'
    config.write_text(f'''
_base_ = ['{LAS_DEMO}']
data_root = '{root}'
train_dataloader = dict(dataset=dict(data_root=data_root))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                        end={ITERS})]
''' + DETERMINISTIC)
    full, resumed = train_killed_and_resumed(config, tmp_path)
    assert_resume_exact(full, resumed, ['temperature', 'sparsity_target', 'loss_sparsity'])


def run_test_tool(config, checkpoint, work_dir, *args):
    """tools/test.py; checks the sparsity metric and returns the log."""
    out = tool('tools/test.py', config, checkpoint, '--work-dir', work_dir, *args)
    log = out.stdout + out.stderr
    rate = float(re.search(r'sparsity/activation_rate: ([0-9.]+)', log).group(1))
    assert 0.0 < rate <= 1.0
    return log


def test_segmentation_resume_after_sigkill_is_exact(tmp_path):
    """DeepLabv3 + LAS-ResNet-18 (the VOC config shrunk): random crops and flips
    (replayed by the data skip), Gumbel masks, dropout, PolyLR."""
    data = build_voc_fixture(tmp_path / 'voc', num_shape_images=4, image_size=128, seed=0)
    config = tiny_voc_config(tmp_path / 'las_seg.py', VOC_LAS, data['data_root'])
    config.write_text(config.read_text() + DETERMINISTIC + f'''
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end={ITERS},
                        by_epoch=False)]
''')
    # tools/test.py with fp16 testing (bf16 autocast on CPU) and --fuse-conv-bn, on the
    # uninterrupted run's checkpoint while the resumed run trains
    test_config = tmp_path / 'las_seg_test.py'
    test_config.write_text(config.read_text().replace("val_cfg = None\n", '').replace(
        'val_dataloader = None\n', '').replace('val_evaluator = None\n', '') + """
test_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='SparsityMetric')]
test_cfg = dict(type='TestLoop', fp16=True)
""")
    logs = []

    def evaluate(full):
        logs.append(run_test_tool(test_config, full / f'iter_{ITERS}.pth', tmp_path / 'test',
                                  '--fuse-conv-bn'))
    full, resumed = train_killed_and_resumed(config, tmp_path, while_resuming=evaluate)
    assert_resume_exact(full, resumed, ['temperature', 'sparsity_target', 'loss_sparsity'])
    assert 'mIoU' in logs[0]


# -- distributed agreement ------------------------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return str(probe.getsockname()[1])


def test_two_processes_agree_with_one(tmp_path):
    """DeepLabv3 + CAD-ResNet-50 (edge masks) on the Cityscapes fixture, one SGD step,
    global batch 2: two gloo processes (batch 1 each) against one process (batch 2).
    The run is made batch-decomposable -- no augmentation, BatchNorm in eval mode
    (norm_eval), no dropout, heads without BN, the pixel-mean CE loss -- so the global
    batch's gradient is the mean of the two ranks' gradients.
    Checks: identical parameters on both ranks; the mean of the ranks' losses equals
    the single process's loss; the same parameters (float tolerance); validation
    (IoUMetric + SparsityMetric over the 2-image val split, sharded across the ranks)
    reports the same numbers."""
    data = build_cityscapes_fixture(tmp_path / 'cityscapes', num_images_per_split=2,
                                    size=(64, 128))
    config = tmp_path / 'cad_dist.py'
    config.write_text(f'''
_base_ = ['{CAD_EDGE}']
custom_imports = dict(imports=['mmdyn', 'reliability_hooks'], allow_failed_imports=False)
data_root = '{data['root']}'
crop_size = (64, 128)
model = dict(
    pretrained=None, data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=50, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True,
                  init_cfg=None),
    decode_head=dict(channels=16, norm_cfg=None, dropout_ratio=0.0),
    auxiliary_head=dict(channels=8, norm_cfg=None, dropout_ratio=0.0))
pipeline = [
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=(128, 64), keep_ratio=False),
    dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='SparsityMetric')]
train_cfg = dict(max_iters=1, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=1e-3))  # a small step: float rounding stays small
param_scheduler = []
custom_hooks = [dict(type='RankDumpHook')]
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
''')
    single, double = tmp_path / 'one', tmp_path / 'two'
    one_process = spawn('tools/train.py', config, '--work-dir', single)
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(double),
         '--cfg-options', 'train_dataloader.batch_size=1'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**tool_env(), 'PYTHON': sys.executable, 'PORT': free_port()})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finish(one_process)

    rank0, rank1 = load(double / 'params_rank0.pth'), load(double / 'params_rank1.pth')
    one, start = load(single / 'params_rank0.pth'), load(single / 'params_init_rank0.pth')
    assert_bitwise_equal(start, load(double / 'params_init_rank0.pth'), 'initial weights')
    rank_diff = max(float((rank0[k].float() - rank1[k].float()).abs().max()) for k in rank0)
    print(f'distributed: max abs parameter difference between the ranks {rank_diff}')
    assert rank_diff == 0.0
    # Same step up to float rounding: the updates (weights after - before) of the two
    # runs agree to 1e-3 of their size, tensor by tensor (measured: 5e-4). One step
    # only: from a random init with untrained BatchNorm statistics the activations and
    # gradients are huge and the loss rises, so rounding differences (oneDNN rounds a
    # batch-1 conv differently from a batch-2 one) grow to ~1% of the update by the
    # second step.
    worst = 0.0
    for key in one:
        if not one[key].is_floating_point():
            continue
        update = (one[key] - start[key]).float().norm()
        if update > 0:
            worst = max(worst, float((rank0[key] - one[key]).float().norm() / update))
    moved = max(float((one[k].float() - rank0[k].float()).abs().max()) for k in one)
    print(f'distributed: 2 processes vs 1: max abs parameter difference {moved}, '
          f'largest update difference relative to the update {worst}')
    assert worst < 1e-3

    losses = [json.loads((double / f'losses_rank{r}.json').read_text()) for r in (0, 1)]
    reference = json.loads((single / 'losses_rank0.json').read_text())
    assert losses[0] != losses[1]  # the ranks saw different images
    for step, values in reference.items():
        for key, value in values.items():
            mean = (losses[0][step][key] + losses[1][step][key]) / 2
            assert mean == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)

    metrics = {}
    for name, work in (('one', single), ('two', double)):
        entries = [json.loads(line) for path in work.rglob('scalars.json')
                   for line in path.read_text().splitlines()]
        metrics[name] = {k: v for e in entries for k, v in e.items()
                         if k.startswith(('sparsity/', 'mIoU'))}
    assert 'sparsity/activation_rate' in metrics['one']
    assert metrics['one'].keys() == metrics['two'].keys()
    for key, value in metrics['one'].items():
        assert metrics['two'][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
