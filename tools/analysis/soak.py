"""Soak test of sparse inference: thousands of forwards with varying (odd) input sizes
and masks, printing the resident memory (RSS) over time; the JSON has the curve.

    python tools/analysis/soak.py --iterations 2000 --arch las sar cad --out work_dirs/soak.json

Models (random weights; memory depends on shapes only): LAS-ResNet-18 (S=4-4-2-1),
SAR-ResNet-18 (G2s2a2b1, K=4-4-2), CAD-ResNet-50 (OS16->8, random keep masks).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis.soak import soak  # noqa: E402
from mmdyn.models.backbones import CADResNet, LASResNet, SARResNet  # noqa: E402

BUILDERS = {
    'las': lambda: LASResNet(18, granularity=(4, 4, 2, 1), init_cfg=None),
    'sar': lambda: SARResNet(18, sar_setting='G2s2a2b1', mask_size=(4, 4, 2),
                             min_input_size=32, init_cfg=None),
    'cad': lambda: CADResNet(50, mask_source=dict(type='RandomMask'), init_cfg=None),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iterations', type=int, default=2000)
    parser.add_argument('--arch', nargs='+', choices=sorted(BUILDERS), default=sorted(BUILDERS))
    parser.add_argument('--min-size', type=int, default=33)
    parser.add_argument('--max-size', type=int, default=129)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--every', type=int, default=100, help='RSS sample interval')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='write the RSS curve as JSON here')
    args = parser.parse_args()
    for name in ('iterations', 'min_size', 'batch', 'every', 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.max_size < args.min_size:
        parser.error('--max-size must be >= --min-size')
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    backbones = {name: BUILDERS[name]() for name in args.arch}
    curve = soak(backbones, args.iterations, args.min_size, args.max_size, args.batch,
                 args.every, args.seed)
    rss = [r for _, r in curve]
    summary = dict(start_mib=rss[0], max_mib=max(rss), end_mib=rss[-1],
                   after_first_sample_mib=rss[1] if len(rss) > 1 else rss[0])
    print('RSS start {start_mib:.1f} MiB, max {max_mib:.1f} MiB, end {end_mib:.1f} MiB'
          .format(**summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(args=vars(args), curve=curve, **summary),
                                             indent=1))


if __name__ == '__main__':
    main()
