"""Latency of a dynamic backbone's sparse path against its dense ResNet twin.

Both networks have the same weights and BatchNorm folded; the dynamic one runs in
``sparse`` mode with masks forced to the given activation rates. Everything runs in one
process on the same input with the same thread count; each number is the median of
``--repeats`` timed runs after ``--warmup`` runs. Prints per-stage and whole-backbone
latency ratios next to executed-FLOPs ratios and saves JSON.

    python tools/analysis/benchmark_latency.py --depth 101 --granularity 8 4 7 1
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis import (build_dense_twin, build_las_backbone,  # noqa: E402
                            fold_stem_, run_stem, stage_flops)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=101)
    parser.add_argument('--granularity', type=int, nargs='+', default=[8, 4, 7, 1])
    parser.add_argument('--rates', type=float, nargs='+', default=[0.3, 0.5, 0.7])
    parser.add_argument('--input', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None, help='JSON path (default under work_dirs/)')
    return parser.parse_args()


@torch.no_grad()
def time_stages(backbone, x, warmup: int, repeats: int):
    """Median seconds of the stem and of every stage, and of the whole forward."""
    runs = []
    for step in range(warmup + repeats):
        times = []
        start = time.perf_counter()
        out = run_stem(backbone, x)
        times.append(time.perf_counter() - start)
        for name in backbone.res_layers:
            begin = time.perf_counter()
            out = getattr(backbone, name)(out)
            times.append(time.perf_counter() - begin)
        if step >= warmup:
            runs.append(times)
    per_part = [statistics.median(part) for part in zip(*runs)]
    total = statistics.median(sum(run) for run in runs)
    return per_part, total


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    las = build_las_backbone(args.depth, tuple(args.granularity)).eval()
    dense = build_dense_twin(las).eval()
    fold_stem_(las)
    las.set_execution_mode('sparse')
    x = torch.randn(args.batch, 3, *args.input)
    parts = ['stem'] + list(dense.res_layers)
    print(f'LAS-ResNet-{args.depth} S={"-".join(map(str, args.granularity))} input '
          f'{args.batch}x3x{args.input[0]}x{args.input[1]}, {args.threads} threads, '
          f'median of {args.repeats} after {args.warmup} warm-up')
    dense_parts, dense_total = time_stages(dense, x, args.warmup, args.repeats)
    report = dict(config=vars(args), torch=torch.__version__,
                  dense=dict(latency_s=dense_total, stage_latency_s=dict(zip(parts, dense_parts))),
                  rates=[])
    print(f'dense: {dense_total * 1e3:.1f} ms  ('
          + ', '.join(f'{p} {t * 1e3:.1f}' for p, t in zip(parts, dense_parts)) + ')')
    header = f'{"rate":>5} {"part":>7} {"lat ms":>9} {"lat ratio":>9} {"FLOPs ratio":>11} {"lat/FLOPs":>9}'
    print(header)
    for rate in args.rates:
        las.set_forced_activation(rate, seed=args.seed)
        with torch.no_grad():
            las(x)
        dense_flops, executed_flops = stage_flops(las.records, parts)
        sparse_parts, sparse_total = time_stages(las, x, args.warmup, args.repeats)
        rows = {}
        for part, t_dense, t_sparse in zip(parts, dense_parts, sparse_parts):
            rows[part] = dict(latency_s=t_sparse, latency_ratio=t_sparse / t_dense,
                              flops_ratio=executed_flops[part] / dense_flops[part])
        whole = dict(latency_s=sparse_total, latency_ratio=sparse_total / dense_total,
                     flops_ratio=sum(executed_flops.values()) / sum(dense_flops.values()),
                     gflops_dense=sum(dense_flops.values()) / 1e9,
                     gflops_executed=sum(executed_flops.values()) / 1e9)
        for part, row in list(rows.items()) + [('total', whole)]:
            print(f'{rate:5.2f} {part:>7} {row["latency_s"] * 1e3:9.1f} '
                  f'{row["latency_ratio"]:9.3f} {row["flops_ratio"]:11.3f} '
                  f'{row["latency_ratio"] / row["flops_ratio"]:9.3f}')
        report['rates'].append(dict(rate=rate, stages=rows, total=whole))
    out = args.out or os.path.join(
        'work_dirs', 'benchmark_latency',
        f'las-r{args.depth}-s{"".join(map(str, args.granularity))}-t{args.threads}.json')
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'saved {out}')


if __name__ == '__main__':
    main()
