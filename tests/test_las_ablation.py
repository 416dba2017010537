"""tools/analysis/las_ablation.py: every variant computes the block's output (the tool
asserts it against the shipped executor) and is timed."""
import json
import runpy
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'analysis' / 'las_ablation.py'


def test_ablation_on_a_small_map(tmp_path, monkeypatch):
    monkeypatch.delenv('MMDYN_KERNELS', raising=False)
    import torch
    threads = torch.get_num_threads()
    main = runpy.run_path(str(TOOL), run_name='tool')['main']
    out = tmp_path / 'ablation.json'
    results = main(['--sizes', '2', '4', '--input', '64', '96', '--repeats', '1',
                    '--warmup', '0', '--threads', '1', '--out', str(out)])
    saved = json.loads(out.read_text())['results']
    assert [r['S'] for r in saved] == [2, 4] == [r['S'] for r in results]
    for r in saved:
        assert {'static', 'mmdyn', 'masker separate', 'conv3 separate', 'no fusion',
                'kernels: portable', 'gemm: addmm', 'gemm_acc: addmm',
                'window_groups: from_map', 'window_groups: group_by_group'} <= set(r['ms'])
        assert all(v > 0 for v in r['ms'].values())
        assert r['patches'] == round(0.6 * r['cells'])
    import os
    assert 'MMDYN_KERNELS' not in os.environ  # the pins and threads are the tool's own
    assert torch.get_num_threads() == threads
