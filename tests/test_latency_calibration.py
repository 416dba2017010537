"""mmdyn.latency's CPU calibration, granularity search and accuracy harness, and their
command-line tools, on tiny sizes (the full-size measurements are run by hand; see
docs/latency_predictor.md)."""
import dataclasses
import itertools
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdyn.latency import (BackboneLayout, Hardware, accuracy_study, calibrate_cpu,
                           hardware_from_dict,
                           candidate_sizes, layout_from_config, load_profile,
                           predict_backbone, predict_las_resnet, save_calibration,
                           search_granularity, spearman)
from mmdyn.latency import calibrate as cal
from mmdyn.latency import machine
from mmdyn.latency.accuracy import summarize
from mmdyn.latency.search import derived_config_text, input_size_from_config

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / 'tools' / 'analysis'
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def profile_dir(tmp_path, monkeypatch):
    folder = tmp_path / 'profiles'
    monkeypatch.setenv(machine.ENV_DIR, str(folder))
    return folder


@pytest.fixture(scope='module')
def quick_calibration():
    return calibrate_cpu(threads=1, quick=True)


# ---------------------------------------------------------------- calibration

def test_quick_calibration_is_a_valid_profile(quick_calibration):
    hw = quick_calibration.hardware
    assert isinstance(hw, Hardware) and hw.name == machine.profile_name(1, quick=True)
    assert hw.num_pes == 1  # one thread: no speedup to measure
    for field in ('fp32_units', 'frequency', 'dram_bandwidth', 'l2_ratio', 'launch_time'):
        value = getattr(hw, field)
        assert math.isfinite(value) and value > 0, field
    assert hw.l2_ratio >= 1 and hw.access_quantum in cal.QUANTUM_CANDIDATES
    assert hw.latency_mode in ('add', 'max')
    m = quick_calibration.measurements
    assert m['threads'] == 1 and m['gemm']['rate'] > 0 and m['dram']['bandwidth'] > 0
    assert set(quick_calibration.fit['ops']) == set(m['ops'])
    assert quick_calibration.seconds < 30
    assert 'GMAC/s' in quick_calibration.summary()


def test_calibration_round_trips_through_json(quick_calibration, profile_dir):
    path = save_calibration(quick_calibration)
    assert path == profile_dir / f'{machine.cpu_key()}-t1-quick.json'
    assert load_profile(path) == quick_calibration.hardware
    side = json.loads(cal.sidecar_path(path).read_text())
    assert side['quick'] and side['measurements']['threads'] == 1
    assert hardware_from_dict(side['hardware']) == quick_calibration.hardware
    # Saved as this machine's full profile, it loads by name.
    save_calibration(quick_calibration, machine.profile_path(1))
    assert load_profile('cpu-t1') == quick_calibration.hardware
    assert load_profile('cpu') == quick_calibration.hardware  # one_thread: 1 thread
    assert machine.is_this_machine(quick_calibration.hardware.name)
    assert not machine.is_this_machine('v100')


def test_interrupted_calibration_writes_nothing(profile_dir, monkeypatch, quick_calibration):
    """Ctrl-C during the measurement or while saving leaves no profile, no sidecar and
    no partial file behind."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cal, 'measure_engine', interrupt)
    with pytest.raises(KeyboardInterrupt):
        calibrate_cpu(threads=1, quick=True)
    monkeypatch.undo()
    monkeypatch.setenv(machine.ENV_DIR, str(profile_dir))
    monkeypatch.setattr(cal, 'save_profile', interrupt)  # killed after the sidecar
    with pytest.raises(KeyboardInterrupt):
        save_calibration(quick_calibration)
    left = sorted(p.name for p in profile_dir.glob('*') if not p.name.endswith(
        '.calibration.json'))
    assert left == []
    with pytest.raises(ValueError, match='calibrate_latency.py'):
        load_profile('cpu-t1')


def test_missing_machine_profile_says_how_to_make_it(profile_dir):
    with pytest.raises(ValueError, match='calibrate_latency.py --threads 7'):
        load_profile('cpu-t7')
    with pytest.raises(ValueError, match=r"unknown hardware profile 'cpu7'.*v100.*cpu"):
        load_profile('cpu7')
    with pytest.raises(ValueError, match='latency_mode'):
        calibrate_cpu(threads=1, quick=True, latency_mode='min')
    with pytest.raises(ValueError, match='threads'):
        calibrate_cpu(threads=0, quick=True)
    with pytest.raises(ValueError, match='.json'):
        save_calibration(calibrate_cpu(threads=1, quick=True), profile_dir / 'x.txt')


def test_access_quantum_fit_recovers_a_known_quantum():
    for q in (8, 16, 32):
        efficiency = {n: min(1.0, n / q) for n in (1, 2, 3, 4, 6, 8, 10, 16, 32, 64)}
        assert cal.fit_access_quantum(efficiency)[0] == q


@pytest.mark.parametrize('mode', ['max', 'add'])
def test_rate_fit_recovers_a_known_device(mode):
    """Calibration ops 'measured' on a known device are fitted back to its MAC rate."""
    true = Hardware('true', num_pes=2, fp32_units=12.0, frequency=2.5e9,
                    dram_bandwidth=30e9, l2_ratio=3.0, launch_time=3e-6,
                    access_quantum=16, latency_mode=mode)
    measured = cal.predict_calibration_ops(true, cal.FULL)
    base = dataclasses.replace(true, fp32_units=1.0)
    rate, error = cal.fit_rate(base, cal.FULL, measured, initial=true.peak_macs * 2.7)
    assert rate == pytest.approx(true.peak_macs, rel=0.01) and error < 0.01


# ---------------------------------------------------------------- search

def test_candidate_sizes():
    assert candidate_sizes(56, 56) == (1, 2, 4, 7, 8, 14, 28)  # LASNet Sec. 3.2
    assert candidate_sizes(25, 38) == (1, 2, 5, 19)
    assert candidate_sizes(1, 1) == (1, )


TINY = BackboneLayout(50, (128, 160), granularity=(4, 4, 2, 1))


@pytest.mark.parametrize('profile', ['tx2', 'v100'])
def test_search_is_the_brute_force_minimum(profile):
    hw = load_profile(profile)
    result = search_granularity(hw, TINY, 0.5)
    maps = TINY.stage_maps()
    assert result.granularity[-1] == 1 and result.candidates[-1] == (1, )
    for stage, S in enumerate(result.granularity[:3]):
        assert S in candidate_sizes(*maps[stage]) == result.candidates[stage]
    brute = min(predict_backbone(hw, TINY, g, 0.5).dynamic
                for g in itertools.product(*result.candidates))
    assert result.best.dynamic == pytest.approx(brute, rel=1e-12)
    assert result.best.dynamic <= result.configured.dynamic * (1 + 1e-12)
    per_block = search_granularity(hw, TINY, 0.5, per_block=True)
    assert all(len(g) == n for g, n in zip(per_block.granularity, TINY.stage_blocks))
    assert per_block.best.dynamic <= result.best.dynamic * (1 + 1e-12)
    loose = search_granularity(hw, TINY, 0.5, tolerance=0.05)
    assert loose.best.dynamic <= result.best.dynamic * 1.05 + 1e-12
    assert all(a <= b for a, b in zip(loose.granularity, result.granularity))


def test_predict_backbone_matches_predict_las_resnet():
    layout = BackboneLayout(101, (256, 320))
    for g in ((8, 4, 7, 1), (1, 2, 2, 1)):
        a = predict_backbone('tx2', layout, g, 0.4)
        b = predict_las_resnet('tx2', 101, (256, 320), g, 0.4)
        assert a.dynamic == b.dynamic and a.static == b.static


@pytest.mark.parametrize('rate', [0, -0.1, 1.01, float('nan'), True])
def test_search_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        search_granularity('v100', TINY, rate)


def test_layout_from_config():
    cfg = dict(model=dict(backbone=dict(type='LASResNet', depth=101, granularity=(8, 4, 7, 1)),
                          data_preprocessor=dict(pad_size_divisor=32)),
               test_pipeline=[dict(type='LoadImageFromFile'),
                              dict(type='Resize', scale=(1333, 800), keep_ratio=True)])
    layout = layout_from_config(cfg)
    assert layout.input_hw == (800, 1344) and layout.depth == 101
    assert layout.stage_maps() == ((200, 336), (100, 168), (50, 84), (25, 42))
    assert layout_from_config(cfg, (224, 224)).stage_maps()[0] == (56, 56)
    seg = dict(model=dict(backbone=dict(type='LASResNet', depth=50, strides=(1, 2, 1, 1),
                                        dilations=(1, 1, 2, 4), deep_stem=True)),
               test_dataloader=dict(dataset=dict(pipeline=[
                   dict(type='Resize', scale=(2048, 1024), keep_ratio=True)])))
    layout = layout_from_config(seg)
    assert layout.input_hw == (1024, 2048) and layout.stage_maps()[3] == (128, 256)
    assert any('dilations' in n for n in layout.notes)
    assert input_size_from_config(dict(model=dict(test_cfg=dict(
        mode='slide', crop_size=(512, 1024))))) == (512, 1024)
    result = search_granularity('v100', layout_from_config(cfg, (224, 224)), 0.4)
    text = derived_config_text('base.py', result)
    assert "_base_ = 'base.py'" in text and 'granularity=(' in text
    assert max(len(line) for line in text.splitlines()) <= 100


@pytest.mark.parametrize('backbone, match', [
    (dict(type='ResNet', depth=50), 'no LASResNet'),
    (None, 'no LASResNet'),
    (dict(type='LASResNet', depth=18), 'BasicBlock'),
    (dict(type='LASResNet'), 'no depth')])
def test_layout_rejects_other_backbones(backbone, match):
    with pytest.raises(ValueError, match=match):
        layout_from_config(dict(model=dict(backbone=backbone)), (224, 224))


def test_missing_input_size_is_explained():
    with pytest.raises(ValueError, match='--input'):
        layout_from_config(dict(model=dict(backbone=dict(type='LASResNet', depth=50))))


# ---------------------------------------------------------------- accuracy harness

def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(spearman([1, 1], [1, 2])) and math.isnan(spearman([1], [1]))


def test_accuracy_study_on_tiny_blocks():
    before = os.environ.get('MMDYN_DENSE_FALLBACK')
    result = accuracy_study(load_profile('v100'), sizes=(1, 2), rates=(0.5, 1.0),
                            input_hw=(64, 64), depth=50, threads=1, repeats=1, warmup=0)
    assert os.environ.get('MMDYN_DENSE_FALLBACK') == before
    for key in ('mean_abs_rel_error', 'mean_abs_rel_error_ratio', 'worst_stage', 'spearman',
                'spearman_ratio', 'fastest_s_agreement', 'per_stage', 'points_detail',
                'settings', 'hardware', 'seconds'):
        assert key in result, key
    assert result['points'] == 4 * 2 * 2  # maps 16, 8, 4, 2: S = 1, 2 fit every stage
    assert -1 <= result['spearman'] <= 1 and result['mean_abs_rel_error'] >= 0
    assert result['worst_stage'] in (1, 2, 3, 4) and set(result['per_stage']) == {1, 2, 3, 4}
    assert 0 <= result['fastest_s_agreement'] <= 1
    for p in result['points_detail']:
        assert p['dynamic'] > 0 and p['static'] > 0 and p['predicted_dynamic'] > 0
        assert p['patches'] == round(p['rate'] * p['cells'])
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        accuracy_study(load_profile('v100'), rates=(0.0, ), input_hw=(64, 64), depth=50)
    with pytest.raises(ValueError, match='passes must be'):
        accuracy_study(load_profile('v100'), input_hw=(64, 64), depth=50, passes=0)
    twice = accuracy_study(load_profile('v100'), sizes=(1, 2), rates=(1.0, ), input_hw=(64, 64),
                           depth=50, threads=1, repeats=1, warmup=0, passes=2)
    for p in twice['points_detail']:
        assert len(p['dynamic_passes']) == 2 and min(p['dynamic_passes']) <= p['dynamic']
    assert 0 <= twice['fastest_s_won_a_pass'] <= 1 and twice['settings']['passes'] == 2


def _row(stage, S, rate, passes, predicted):
    return dict(stage=stage, S=S, rate=rate, dynamic=float(np.median(passes)),
                dynamic_passes=list(passes), predicted_dynamic=predicted, static=1.0,
                predicted_static=1.0, ratio=float(np.median(passes)), predicted_ratio=predicted)


def test_fastest_s_over_passes():
    """Several passes: which S won a pass, whether the passes agree, whether the
    predicted S won one (by hand on made-up latencies)."""
    rows = [  # rate 0.5: S = 4 wins passes 1 and 3, S = 8 pass 2; predicted 8
        _row(0, 1, 0.5, (3.0, 3.0, 3.0), 2.9), _row(0, 4, 0.5, (1.0, 1.2, 1.0), 2.0),
        _row(0, 8, 0.5, (1.1, 1.1, 1.1), 1.5),
        # rate 1.0: S = 1 wins every pass; predicted 4 (never won)
        _row(0, 1, 1.0, (2.0, 2.0, 2.0), 3.0), _row(0, 4, 1.0, (2.5, 2.6, 2.4), 1.0),
        _row(0, 8, 1.0, (3.0, 3.0, 3.0), 3.0)]
    result = summarize(rows)
    first, second = result['per_stage'][1]['fastest_s']
    assert (first['measured_S'], first['predicted_S'], first['pass_winners']) == (4, 8, [4, 8])
    assert first['predicted_won_a_pass'] and not first['reproducible']
    assert (second['pass_winners'], second['reproducible'],
            second['predicted_won_a_pass']) == ([1], True, False)
    assert result['fastest_s_agreement'] == 0.0
    assert result['fastest_s_won_a_pass'] == 0.5 and result['fastest_s_reproducible'] == 0.5
    # over the rates, per pass: S = 1 5.0 5.0 5.0, S = 4 3.5 3.8 3.4, S = 8 4.1 4.1 4.1;
    # predicted 5.9, 3.0, 4.5
    choice = result['per_stage'][1]['stage_choice']
    assert (choice['measured_S'], choice['predicted_S'], choice['pass_winners']) == (4, 4, [4])
    assert choice['reproducible'] and choice['predicted_won_a_pass']
    one_pass = summarize([dict(r, dynamic_passes=r['dynamic_passes'][:1]) for r in rows])
    assert 'pass_winners' not in one_pass['per_stage'][1]['fastest_s'][0]
    assert math.isnan(one_pass['fastest_s_reproducible'])


# ---------------------------------------------------------------- command-line tools

def _env(profile_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    env[machine.ENV_DIR] = str(profile_dir)
    return env


def _run(args, env, timeout=120):
    proc = subprocess.run([sys.executable, *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_tools_help(profile_dir):
    code = ('import runpy, sys\n'
            f'for name in ("calibrate_latency", "search_granularity", "predict_latency"):\n'
            f'    sys.argv = [name, "--help"]\n'
            '    try:\n'
            f'        runpy.run_path({str(TOOLS)!r} + "/" + name + ".py", run_name="__main__")\n'
            '    except SystemExit as e:\n'
            '        assert e.code in (0, None), (name, e.code)\n')
    out = _run(['-c', code], _env(profile_dir))
    for flag in ('--quick', '--per-block', '--write-config', '--measure', '--accuracy'):
        assert flag in out


def test_tools_on_a_tiny_case(tmp_path, profile_dir):
    env = _env(profile_dir)
    profile = tmp_path / 'cpu.json'
    out = _run([TOOLS / 'calibrate_latency.py', '--quick', '--threads', '1', '--out', profile],
               env)
    assert 'saved' in out and load_profile(profile).num_pes == 1

    config = tmp_path / 'las.py'
    config.write_text("model = dict(backbone=dict(type='LASResNet', depth=50, "
                      "granularity=(4, 4, 2, 1)))\n"
                      "test_pipeline = [dict(type='Resize', scale=(160, 128), "
                      "keep_ratio=True)]\n")
    derived = tmp_path / 'out' / 'searched.py'
    out = _run([TOOLS / 'search_granularity.py', config, '--profile', profile, '--rate',
                '0.5', '--write-config', derived, '--json', tmp_path / 'search.json'], env)
    found = json.loads((tmp_path / 'search.json').read_text())
    assert 'chosen S' in out and found['granularity'][-1] == 1
    from mmengine.config import Config
    assert list(Config.fromfile(derived).model.backbone.granularity) == found['granularity']
    search = runpy.run_path(str(TOOLS / 'search_granularity.py'), run_name='tool')['main']
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        search([str(config), '--profile', 'v100', '--rate', '1.5'])
    with pytest.raises(ValueError, match='unknown hardware profile'):
        search([str(config), '--profile', 'a100', '--rate', '0.5'])

    figures = tmp_path / 'figures'
    _run([TOOLS / 'predict_latency.py', '--profile', profile, '--depth', '50', '--input',
          '64', '64', '--sizes', '1', '2', '--measure', '--measure-rates', '1.0', '--repeats',
          '1', '--warmup', '0', '--no-tune-allocator', '--out', figures], env)
    report = json.loads((figures / 'predict_latency.json').read_text())
    assert (figures / 'ratio_vs_rate.png').stat().st_size > 0
    assert (figures / 'ratio_vs_size.png').stat().st_size > 0
    assert len(report['measured']) == 4 * 2 * 2  # rates 1.0 and the fixed 0.5


def test_predict_latency_accuracy_in_process(tmp_path):
    tool = runpy.run_path(str(TOOLS / 'predict_latency.py'), run_name='tool')
    result = tool['main'](['--profile', 'v100', '--accuracy', '--depth', '50', '--input', '64',
                           '64', '--sizes', '1', '2', '--rates', '0.5', '1.0', '--threads',
                           '1', '--repeats', '1', '--warmup', '0', '--no-tune-allocator',
                           '--out', str(tmp_path)])
    assert -1 <= result['spearman'] <= 1
    assert json.loads((tmp_path / 'accuracy.json').read_text())['points'] == 16
    assert (tmp_path / 'accuracy.png').stat().st_size > 0
    with pytest.raises(ValueError, match='calibrated on it'):
        tool['main'](['--profile', 'v100', '--measure', '--out', str(tmp_path)])
    with pytest.raises(ValueError, match='unknown hardware profile'):
        tool['main'](['--profile', 'a100', '--out', str(tmp_path)])
