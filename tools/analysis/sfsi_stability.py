"""Inference stability of SFSI-ResNet (appendix Table 3): the task metric and executed
backbone GFLOPs over several sampling seeds, with and without the grid prior.

    python tools/analysis/sfsi_stability.py CONFIG CHECKPOINT [--seeds 0 1 2 3 4] \
        [--grid-priors 11 none] [--out-dir DIR]

Evaluates the config's test set once per (grid prior, seed) with mmengine's Runner
(``CHECKPOINT`` may be ``none`` for random init); writes ``stability.json`` (every run
and the mean / std per grid-prior setting) and prints the table.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import mmdyn  # noqa: E402,F401
from mmdyn.analysis.sfsi import format_rows, stability_study  # noqa: E402
from mmdyn.utils import resolve_checkpoint  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='a local checkpoint, or "none"')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument('--grid-priors', nargs='+', default=['11', 'none'],
                        help='grid-prior steps to evaluate ("none": off)')
    parser.add_argument('--out-dir', default='work_dirs/sfsi_stability')
    args = parser.parse_args()
    try:
        args.grid_priors = [None if p == 'none' else int(p) for p in args.grid_priors]
    except ValueError:
        parser.error(f'--grid-priors takes ints >= 1 or "none", got {args.grid_priors}')
    return args


def main():
    args = parse_args()
    checkpoint = resolve_checkpoint(args.checkpoint, allow_none=True)
    result = stability_study(args.config, checkpoint, args.seeds, args.grid_priors,
                             os.path.join(args.out_dir, 'runs'))
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, 'stability.json')
    with open(out, 'w') as f:
        json.dump(dict(config=args.config, checkpoint=args.checkpoint, **result), f, indent=2)
    print(format_rows(result['summary'], [('grid_prior', 'grid prior'), ('runs', 'seeds'),
                                          ('metric', 'metric'), ('value', 'value'),
                                          ('gflops', 'backbone GFLOPs')]))
    print(f'saved {out}')


if __name__ == '__main__':
    main()
