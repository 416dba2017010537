"""The ITD deliverable study on the real digits data, resumable step by step.

    python tools/analysis/itd_digits_study.py [--depth 18] [--work-dir work_dirs/itd_study]
        [--size 32|64] [--attributes stride dilation size]

Run from the repository root. 1. writes the digits data set (``data/digits-<size>``, the
   configs' ``data_root``) if missing;
2. trains the digits classifier (``configs/itd_resnet/itd-r<depth>_1xb64-8e_digits-<size>px.py``);
3. the oracle (tools/analysis/itd_oracle.py) for dynamic stride {1,2,3}, dilation {1,2,3}
   and kernel size {1,3,5} at positions A-D (81 permutations each) on the test split;
4. random option fine-tuning per attribute (``itd-r<depth>-rof-<attr>_1xb64-<E>e_digits-
   <size>px.py`` configs, E epochs from the trained classifier) and the oracle again;
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


def rof_config(configs: Path, depth: int, attribute: str, size: int):
    """The ROF config of ``attribute`` at ``size`` and its number of epochs."""
    found = sorted(configs.glob(f'itd-r{depth}-rof-{attribute}_1xb64-*e_digits-{size}px.py'))
    if not found:
        raise SystemExit(f'no ROF config for {attribute} at {size} px under {configs}')
    return found[0], int(found[0].name.split('_1xb64-')[1].split('e_')[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=18, choices=(18, 50))
    parser.add_argument('--work-dir', default='work_dirs/itd_study')
    parser.add_argument('--max-batches', type=int, default=None,
                        help='oracle on the first N test batches only')
    parser.add_argument('--batch-size', type=int, default=120, help='oracle batch size')
    parser.add_argument('--size', type=int, default=32, choices=(32, 64),
                        help='digits image side (the configs of that size)')
    parser.add_argument('--attributes', nargs='+', default=list(SPACES), choices=list(SPACES))
    parser.add_argument('--steps', nargs='+', default=['before', 'rof', 'efficiency'],
                        choices=['before', 'rof', 'efficiency'],
                        help='run only these steps (e.g. in two processes); the summary '
                        'is written when all results exist')
    args = parser.parse_args()
    # the configs' data_root (run from the repository root)
    data = ROOT / f'data/digits-{args.size}'
    if not data.is_dir():
        build_digits_fixture(str(data), size=args.size)
    check_digits_root(str(data))
    work = Path(args.work_dir)
    configs = ROOT / 'configs/itd_resnet'
    base_config = configs / f'itd-r{args.depth}_1xb64-8e_digits-{args.size}px.py'
    if not base_config.exists():
        raise SystemExit(f'no digits config {base_config.name} for depth {args.depth} at '
                         f'{args.size} px')
    base = train(base_config, work / 'base', 8)
    spaces = {a: SPACES[a] for a in args.attributes}
    study = {'depth': args.depth, 'size': args.size, 'max_batches': args.max_batches,
             'before_rof': {}, 'after_rof': {}}
    if 'before' in args.steps:
        for attribute, space in spaces.items():
            oracle(base_config, base, work / f'oracle_{attribute}', ['--space', space],
                   args.max_batches, args.batch_size)
    if 'rof' in args.steps:
        for attribute, space in spaces.items():
            config, epochs = rof_config(configs, args.depth, attribute, args.size)
            tuned = train(config, work / f'rof_{attribute}', epochs, load_from=base)
            oracle(config, tuned, work / f'oracle_{attribute}_rof', ['--space', space],
                   args.max_batches, args.batch_size)
    if 'efficiency' in args.steps:
        oracle(base_config, base, work / 'efficiency', EFFICIENCY, args.max_batches,
               args.batch_size)
    needed = [work / f'oracle_{a}{s}' / 'summary.json' for a in spaces for s in ('', '_rof')]
    if not all(p.exists() for p in needed + [work / 'efficiency' / 'efficiency.json']):
        return
    for attribute in spaces:
        study['before_rof'][attribute] = json.loads(
            (work / f'oracle_{attribute}' / 'summary.json').read_text())
        study['after_rof'][attribute] = json.loads(
            (work / f'oracle_{attribute}_rof' / 'summary.json').read_text())
    study['efficiency'] = json.loads((work / 'efficiency' / 'efficiency.json').read_text())
    study['accumulation'] = {a: json.loads((work / f'oracle_{a}' / 'accumulation.json')
                                           .read_text())['curve'] for a in spaces}
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
