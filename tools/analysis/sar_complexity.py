"""Parameters and FLOPs of SAR-ResNet against ResNet (the SAR paper's complexity table).

SAR FLOPs come from the backbone's own records after one forward (masked mode, zero
input) with masks forced to each activation rate r (exactly round(r * cells) cells
active per block and group). FLOPs are multiply-accumulates (mmengine/fvcore
convention). 224x224 inputs include a 1000-way GAP + fc classifier on both models (the
ImageNet comparison); other inputs count the backbone only (detection inputs).
Prints a Markdown table and saves JSON.

    python tools/analysis/sar_complexity.py --depths 34 50 --inputs 224x224 800x1216
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis.complexity import format_table, sar_complexity  # noqa: E402

CLASSIFIER_INPUT = (224, 224)
NUM_CLASSES = 1000


def parse_size(text: str):
    try:
        height, width = (int(n) for n in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not of the form HxW, e.g. 224x224')
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: sizes must be positive')
    return height, width


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depths', type=int, nargs='+', default=[34, 50])
    parser.add_argument('--settings', nargs='+', default=['G2s2a2b1', 'G4s4a2b1', 'G2s4a1'])
    parser.add_argument('--inputs', type=parse_size, nargs='+',
                        default=[(224, 224), (800, 1216)], metavar='HxW')
    parser.add_argument('--rates', type=float, nargs='+', default=[1.0, 0.5, 0.3])
    parser.add_argument('--mask-size', type=int, nargs=3, default=[7, 7, 2],
                        metavar=('K1', 'K2', 'K3'),
                        help='region-selection grid K per SAR stage')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0, help='seed of the forced masks')
    parser.add_argument('--out', default='work_dirs/sar_complexity/complexity.json',
                        help='JSON path')
    args = parser.parse_args(argv)
    for rate in args.rates:
        if not 0.0 <= rate <= 1.0:
            parser.error(f'--rates: {rate} is not in [0, 1]')
    return args


def caption(inputs, mask_size) -> str:
    parts = []
    if any(tuple(size) == CLASSIFIER_INPUT for size in inputs):
        parts.append(f'{CLASSIFIER_INPUT[0]}x{CLASSIFIER_INPUT[1]} rows include a '
                     f'{NUM_CLASSES}-way classifier (GAP + fc) on both models')
    if any(tuple(size) != CLASSIFIER_INPUT for size in inputs):
        parts.append('other inputs: backbone only')
    return ('Parameters and FLOPs (GFLOPs = 1e9 multiply-accumulates, per image) of '
            'SAR-ResNet with masks forced to activation rate r, K = '
            f'{"-".join(map(str, mask_size))}; ' + '; '.join(parts) + '.')


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    rows = []
    for size in args.inputs:
        classifier = NUM_CLASSES if tuple(size) == CLASSIFIER_INPUT else None
        for depth in args.depths:
            for setting in args.settings:
                rows.append(sar_complexity(depth, setting, size, rates=args.rates,
                                           mask_size=tuple(args.mask_size),
                                           classifier=classifier, seed=args.seed))
    text = caption(args.inputs, args.mask_size)
    table = format_table(rows)
    print(text)
    print()
    print(table)
    report = dict(config=dict(vars(args), inputs=[list(s) for s in args.inputs]),
                  torch=torch.__version__, caption=text, table=table, rows=rows,
                  seconds=time.perf_counter() - start)
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'\nsaved {args.out} ({report["seconds"]:.1f} s)')
    return report


if __name__ == '__main__':
    main()
