"""Kernel wins per setting, read from kernel-choice files (mmdyn/analysis/kernel_wins.py)."""
import json
import runpy
from pathlib import Path

import pytest

from mmdyn.analysis.kernel_wins import kernel_wins, never_winning, setting_label, wins_table

CANDIDATES = {'gemm': ['addmm', 'conv1x1', 'conv1x1_packed'], 'mask_heads': ['torch', 'native']}


def _write(path, threads, caps, choices, allocator='default'):
    machine = dict(cpu='AMD EPYC', threads=threads, allocator=allocator,
                   isa_caps={'ATEN_CPU_CAPABILITY': caps, 'ONEDNN_MAX_CPU_ISA': caps,
                             'MKL_ENABLE_INSTRUCTIONS': caps})
    path.write_text(json.dumps(dict(machine=machine, choices=choices)))
    return path


def test_wins_per_setting(tmp_path):
    _write(tmp_path / 'kernels-a.json', 2, '', {
        'gemm:cpu:float32x1024x64x256': 'conv1x1_packed',
        'gemm:cpu:float32x64x64x64': 'addmm',
        'crossover:cpu:LASBottleneck:x': 0.5, 'mask_heads:cpu:float32x9': 'native'})
    _write(tmp_path / 'kernels-b.json', 1, 'AVX2', {
        'gemm:cpu:float32x1024x64x256': 'conv1x1_packed', 'unknown_op:cpu:1': 'x'})
    wins = kernel_wins([tmp_path], CANDIDATES)
    two, capped = '2 threads', ('1 thread, ATEN_CPU_CAPABILITY=AVX2, MKL_ENABLE_INSTRUCTIONS='
                                'AVX2, ONEDNN_MAX_CPU_ISA=AVX2')
    assert set(wins) == {two, capped}
    assert wins[two]['gemm'] == {'addmm': ['cpu:float32x64x64x64'], 'conv1x1': [],
                                 'conv1x1_packed': ['cpu:float32x1024x64x256']}
    assert wins[capped]['mask_heads'] == {'torch': [], 'native': []}
    assert never_winning(wins) == {'gemm': ['conv1x1'], 'mask_heads': ['torch']}
    table = wins_table(wins)
    assert '| gemm | conv1x1_packed | 1 / 2 | 1 / 1 |' in table
    assert '| mask_heads | native | 1 / 1 | – |' in table
    assert setting_label(dict(threads=2, isa_caps={}, allocator='tuned')) == \
        '2 threads, allocator tuned'


def test_bad_files_are_named(tmp_path):
    (tmp_path / 'kernels-bad.json').write_text('{not json')
    with pytest.raises(ValueError, match='kernels-bad.json is not a kernel-choice file'):
        kernel_wins([tmp_path], CANDIDATES)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no kernel-choice file'):
        kernel_wins([tmp_path / 'empty'], CANDIDATES)
    with pytest.raises(ValueError, match='no such file or folder'):
        kernel_wins([tmp_path / 'missing'], CANDIDATES)


def test_tool(tmp_path, capsys):
    _write(tmp_path / 'kernels-a.json', 2, '', {'gemm:cpu:float32x1x2x3': 'addmm'})
    tool = Path(__file__).resolve().parents[1] / 'tools' / 'analysis' / 'kernel_wins.py'
    main = runpy.run_path(str(tool), run_name='tool')['main']
    main([str(tmp_path), '--out', str(tmp_path / 'wins.json')])
    out = capsys.readouterr().out
    assert '| gemm | addmm | 1 / 1 |' in out and 'won nowhere: ' in out
    assert json.loads((tmp_path / 'wins.json').read_text())['never_won']['gemm']
