"""The ITD deliverable study on the real digits data, resumable step by step.

    python tools/analysis/itd_digits_study.py [--depth 18] [--work-dir work_dirs/itd_study]

Run from the repository root. 1. writes the digits data set (``data/digits-32``, the
   configs' ``data_root``) if missing;
2. trains the digits classifier (``configs/itd_resnet/itd-r<depth>_1xb64-8e_digits-32px.py``);
3. the oracle (tools/analysis/itd_oracle.py) for dynamic stride {1,2,3}, dilation {1,2,3}
   and kernel size {1,3,5} at positions A-D (81 permutations each) on the test split;
4. random option fine-tuning per attribute (``itd-r<depth>-rof-<attr>`` configs, one epoch
   from the trained classifier) and the oracle again;
5. the efficiency variant (strides {2,3,4} x sizes {1,3} at positions C, D, against the
   default permutation) on the trained classifier.

Every step skips what its output directory already holds (checkpoints, oracle batches),
so a rerun resumes. Writes ``study.json`` and prints a table.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tools' / 'analysis'))
import itd_oracle  # noqa: E402

from mmdyn.datasets.digits_fixture import build_digits_fixture, check_digits_root  # noqa: E402

SPACES = {'stride': 'stride=1,2,3', 'dilation': 'dilation=1,2,3', 'size': 'kernel_size=1,3,5'}
EFFICIENCY = ['--space', 'stride=2,3,4', '--space', 'kernel_size=1,3', '--positions', 'C', 'D']


def train(config, work_dir, epochs, load_from=None):
    checkpoint = work_dir / f'epoch_{epochs}.pth'
    if not checkpoint.exists():
        args = [sys.executable, str(ROOT / 'tools/train.py'), str(config), '--work-dir',
                str(work_dir)]
        if load_from:
            args += ['--cfg-options', f'load_from={load_from}']
        subprocess.run(args, cwd=ROOT, check=True,
                       env={**os.environ, 'PYTHONPATH': str(ROOT)})
    return checkpoint


def oracle(config, checkpoint, out_dir, space_args, max_batches=None, batch_size=120):
    summary = out_dir / 'summary.json'
    if not summary.exists():
        limit = [] if max_batches is None else ['--max-batches', str(max_batches)]
        limit += ['--cfg-options', f'test_dataloader.batch_size={batch_size}']
        itd_oracle.main([str(config), str(checkpoint), *space_args, '--out-dir', str(out_dir),
                         '--work-dir', str(out_dir / 'run'), *limit])
    return json.loads(summary.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=18, choices=(18, 50))
    parser.add_argument('--work-dir', default='work_dirs/itd_study')
    parser.add_argument('--max-batches', type=int, default=None,
                        help='oracle on the first N test batches only')
    parser.add_argument('--batch-size', type=int, default=120, help='oracle batch size')
    parser.add_argument('--steps', nargs='+', default=['before', 'rof', 'efficiency'],
                        choices=['before', 'rof', 'efficiency'],
                        help='run only these steps (e.g. in two processes); the summary '
                        'is written when all results exist')
    args = parser.parse_args()
    data = ROOT / 'data/digits-32'  # the configs' data_root (run from the repository root)
    if not data.is_dir():
        build_digits_fixture(str(data), size=32)
    check_digits_root(str(data))
    work = Path(args.work_dir)
    configs = ROOT / 'configs/itd_resnet'
    base_config = configs / f'itd-r{args.depth}_1xb64-8e_digits-32px.py'
    base = train(base_config, work / 'base', 8)
    study = {'depth': args.depth, 'max_batches': args.max_batches, 'before_rof': {},
             'after_rof': {}}
    if 'before' in args.steps:
        for attribute, space in SPACES.items():
            oracle(base_config, base, work / f'oracle_{attribute}', ['--space', space],
                   args.max_batches, args.batch_size)
    if 'rof' in args.steps:
        for attribute, space in SPACES.items():
            rof_config = configs / f'itd-r{args.depth}-rof-{attribute}_1xb64-1e_digits-32px.py'
            tuned = train(rof_config, work / f'rof_{attribute}', 1, load_from=base)
            oracle(rof_config, tuned, work / f'oracle_{attribute}_rof', ['--space', space],
                   args.max_batches, args.batch_size)
    if 'efficiency' in args.steps:
        oracle(base_config, base, work / 'efficiency', EFFICIENCY, args.max_batches,
               args.batch_size)
    needed = [work / f'oracle_{a}{s}' / 'summary.json' for a in SPACES for s in ('', '_rof')]
    if not all(p.exists() for p in needed + [work / 'efficiency' / 'efficiency.json']):
        return
    for attribute in SPACES:
        study['before_rof'][attribute] = json.loads(
            (work / f'oracle_{attribute}' / 'summary.json').read_text())
        study['after_rof'][attribute] = json.loads(
            (work / f'oracle_{attribute}_rof' / 'summary.json').read_text())
    study['efficiency'] = json.loads((work / 'efficiency' / 'efficiency.json').read_text())
    study['accumulation'] = {a: json.loads((work / f'oracle_{a}' / 'accumulation.json')
                                           .read_text())['curve'] for a in SPACES}
    (work / 'study.json').write_text(json.dumps(study, indent=1))
    print('| attribute | ROF | reference | best | median | worst |')
    print('|---|---|---:|---:|---:|---:|')
    for phase in ('before_rof', 'after_rof'):
        for attribute, s in study[phase].items():
            print(f"| {attribute} | {'after' if phase == 'after_rof' else 'before'} | "
                  f"{s['reference']:.3f} | {s['best']:.3f} | {s['median']:.3f} | "
                  f"{s['worst']:.3f} |")
    print(json.dumps(study['efficiency'], indent=1))


if __name__ == '__main__':
    main()
