"""tools/analysis/check_device.py: every check on the CPU at a small size (what CI can
run: nothing here needs a GPU), and a one-line refusal, exit status 2, of a device that
torch does not know or that this machine does not have."""
import json
import math
import runpy
import subprocess
import sys

import pytest
import torch

from e2e_helpers import ROOT, run

TOOL = ROOT / 'tools' / 'analysis' / 'check_device.py'
BACKBONES = {'LASResNet', 'SARResNet', 'SFSIResNet', 'CADResNet', 'CADVGG', 'ITDResNet'}


@pytest.mark.slow
def test_cpu_run_passes_every_check_and_writes_json(tmp_path):
    out = tmp_path / 'cpu.json'
    # one thread: on a shared machine's busy cores, OpenMP's waits cost seconds a forward
    text = run(TOOL, '--device', 'cpu', '--size', '48', '64', '--batch', '2', '--threads', '1',
               '--repeats', '2', '--warmup', '1', '--out', out)
    assert 'PASSED' in text
    report = json.loads(out.read_text())
    assert report['passed'] and report['device'] == 'cpu' and report['threads'] == 1
    assert report['torch'] == torch.__version__ and report['device_name']
    assert {row['backbone'] for row in report['backbones']} == BACKBONES
    for row in report['backbones']:
        assert row['passed'], row
        if row['reference'] is None:  # ITD: one path, the forward runs
            continue
        assert row['error'] < 1e-4, row
        assert 0.1 < row['activation_rate'] < 0.9, row  # partial masks: a real comparison
    for key, model in (('detector', 'DynFasterRCNN'), ('segmentor', 'DynEncoderDecoder')):
        step = report['steps'][key]
        assert step['passed'] and step['model'] == model, step
        assert math.isfinite(step['loss']) and math.isfinite(step['loss_sparsity']), step
        assert step['predictions'] == 2 and step['predictions_complete'], step
    assert len(report['latency']) == 2
    for row in report['latency']:
        assert row['static_ms'] > 0 and row['sparse_ms'] > 0 and row['ratio'] > 0, row


def test_a_device_torch_does_not_know_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, str(TOOL), '--device', 'nosuch'], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ''
    assert result.stderr.strip().splitlines() == [
        "check_device: device 'nosuch' is not a device torch knows; expected a type such "
        'as cpu, cuda or mps, optionally with an index (cuda:1)']


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
@pytest.mark.parametrize('device', ['cuda', 'cuda:1'])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(device, capsys, tmp_path):
    main = runpy.run_path(str(TOOL))['main']  # in process: the subprocess case is above
    with pytest.raises(SystemExit) as exit:
        main(['--device', device, '--out', str(tmp_path / 'never.json')])
    assert exit.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == '' and not (tmp_path / 'never.json').exists()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"check_device: device '{device}': CUDA is not available here")


@pytest.fixture
def flush_denormal_restored():
    """The tool's main turns on flushing denormals (for its timings), process-wide; an
    in-process run must leave the suite with torch's default (off)."""
    yield
    torch.set_flush_denormal(False)


@pytest.mark.usefixtures('flush_denormal_restored')
def test_a_failed_comparison_exits_1_and_names_the_error(monkeypatch, capsys, tmp_path):
    """The exit status and the report follow the verdict (here a zero tolerance fails
    the one backbone kept, however small its rounding error)."""
    from mmdyn.analysis import device_check
    monkeypatch.setattr(device_check, 'TOLERANCE', 0.0)
    monkeypatch.setattr(device_check, 'BACKBONES', [
        row for row in device_check.BACKBONES if row.name == 'sar-r18'])
    main = runpy.run_path(str(TOOL))['main']
    out = tmp_path / 'cpu.json'
    with pytest.raises(SystemExit) as exit:
        main(['--size', '32', '32', '--batch', '1', '--skip-train', '--skip-latency',
              '--out', str(out)])
    assert exit.value.code == 1
    assert 'FAILED' in capsys.readouterr().out
    report = json.loads(out.read_text())
    [row] = report['backbones']
    assert not report['passed'] and not row['passed']
    assert row['failure'].startswith('relative L2 error') and row['error'] < 1e-4
    assert report['steps'] is None and report['latency'] is None
