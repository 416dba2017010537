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
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis import (build_dense_twin, build_las_backbone,  # noqa: E402
                            keep_freed_memory, prepare_sparse_for_timing,
                            stage_flops, time_pair)


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


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()  # denormals slow x86 CPUs by orders of magnitude
    torch.manual_seed(args.seed)
    las = build_las_backbone(args.depth, tuple(args.granularity))
    # Both networks run channels-last: it is the faster layout for the dense twin too.
    dense = build_dense_twin(las)
    las = prepare_sparse_for_timing(las)
    x = torch.randn(args.batch, 3, *args.input).contiguous(memory_format=torch.channels_last)
    parts = ['stem'] + list(dense.res_layers)
    print(f'LAS-ResNet-{args.depth} S={"-".join(map(str, args.granularity))} input '
          f'{args.batch}x3x{args.input[0]}x{args.input[1]}, {args.threads} threads, '
          f'median of {args.repeats} after {args.warmup} warm-up')
    report = dict(config=vars(args), torch=torch.__version__, rates=[])
    header = f'{"rate":>5} {"part":>7} {"lat ms":>9} {"lat ratio":>9} {"FLOPs ratio":>11} {"lat/FLOPs":>9}'
    print(header)
    for rate in args.rates:
        las.set_forced_activation(rate, seed=args.seed)
        with torch.no_grad():
            las(x)
        dense_flops, executed_flops = stage_flops(las.records, parts)
        timed = time_pair(dense, las, x, args.warmup, args.repeats)
        (dense_parts, dense_total), (sparse_parts, sparse_total) = timed['dense'], timed['sparse']
        print(f'dense: {dense_total * 1e3:.1f} ms, sparse: {sparse_total * 1e3:.1f} ms')
        rows = {}
        for part, t_dense, t_sparse in zip(parts, dense_parts, sparse_parts):
            rows[part] = dict(latency_s=t_sparse, dense_latency_s=t_dense, latency_ratio=t_sparse / t_dense,
                              flops_ratio=executed_flops[part] / dense_flops[part])
        whole = dict(latency_s=sparse_total, dense_latency_s=dense_total, latency_ratio=sparse_total / dense_total,
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
