"""Latency of a dynamic backbone's sparse path against the dense ResNet.

LAS-ResNet and SFSI-ResNet are compared with their dense twins (same weights);
SFSI's masks are pixel masks forced to the rate in every block (grid prior on top
unless ``--grid-prior none``), with ``--profile`` a torch.profiler breakdown of its
sparse forward per part. SAR-ResNet, whose
architecture differs, with the plain ResNet of the same depth and with its own
``masked`` execution. Every network has BatchNorm folded and runs channels-last; the
dynamic ones get masks forced to the given activation rates. Everything runs in one
process on the same input with the same thread count, the networks' passes
alternating; each number is the median of ``--repeats`` timed runs after ``--warmup``
runs. Prints per-stage and whole-backbone latency ratios next to executed-FLOPs ratios
and saves JSON.

    python tools/analysis/benchmark_latency.py --depth 101 --granularity 8 4 7 1
    python tools/analysis/benchmark_latency.py --arch sar --depth 50 --setting G2s2a2b1 \
        --threads 2 1
    python tools/analysis/benchmark_latency.py --arch sfsi --depth 101 --rates 0.2 0.4 0.6 \
        --profile

Any mmdyn config (DESIGN contract 7; mmdyn/analysis/config_benchmark.py): the config's
backbone against its static twin, whole calls, in the default process (no allocator
tuning), masks forced at the rates or ``source`` (the model's own maskers / mask source
on ``--image``); ``--part model`` times the whole detector / segmentor / classifier::

    python tools/analysis/benchmark_latency.py CONFIG [--checkpoint CKPT] \
        [--rates 0.3 0.5 source] [--image astronaut] [--input H W] [--threads 2 1] \
        [--part backbone|model] [--coarse-twin] [--engine-twin]

``--coarse-twin`` (CAD-ResNet configs): the strided network at the base output stride
is timed too, and the latency interpolated between it and the dilated twin by
multiply-adds is printed next to CAD's (e.g. edge masks of several thresholds on a
photo: ``--rates source --image coffee --cfg-options
model.backbone.mask_source.threshold=0.95``). ``--engine-twin``: the static twin is
timed a second time, run the way mmdyn runs the static parts of its backbones
(BatchNorm-folded blocks, measured dense-convolution kernels), after the rates and
against the stock twin only, and the dynamic backbone's latency over it is printed too:
the part of a ratio the masks, not the engine, earn. Give each thread count its own
process for figures you will quote.
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
from mmengine.config import DictAction

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis import keep_freed_memory, stage_flops, time_models  # noqa: E402
from mmdyn.analysis.complexity import dense_part_flops  # noqa: E402
from mmdyn.analysis.config_benchmark import SOURCE, benchmark_config, parse_rate  # noqa: E402
from mmdyn.analysis.sfsi import profile_sparse_parts  # noqa: E402
from mmdyn.models.backbones import LASResNet, SARResNet, SFSIResNet  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', default=None,
                        help='an mmdyn config (then --arch/--depth/... are not used)')
    parser.add_argument('--checkpoint', default=None, help='config mode: weights to load')
    parser.add_argument('--part', choices=('backbone', 'model'), default='backbone',
                        help='config mode: time the backbone or the whole model')
    parser.add_argument('--image', default=None,
                        help='config mode: a photo (path or skimage.data name) as input')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    parser.add_argument('--coarse-twin', action='store_true',
                        help='config mode, CAD-ResNet: also time the strided network and '
                        'interpolate between the two twins by multiply-adds')
    parser.add_argument('--engine-twin', action='store_true',
                        help='config mode: also time the static twin on mmdyn\'s engine')
    parser.add_argument('--arch', choices=('las', 'sar', 'sfsi'), default='las')
    parser.add_argument('--depth', type=int, default=None,
                        help='default: 101 for LAS and SFSI, 50 for SAR')
    parser.add_argument('--grid-prior', default='11',
                        help='SFSI: grid-prior step, or "none"')
    parser.add_argument('--sparse-conv3', choices=('sampled', 'dense'), default='dense',
                        help='SFSI: conv3 on the sampled pixels or on every pixel')
    parser.add_argument('--profile', action='store_true',
                        help='SFSI: torch.profiler breakdown of the sparse forward per rate')
    parser.add_argument('--granularity', type=int, nargs='+', default=[8, 4, 7, 1],
                        help='LAS: patch size S per stage')
    parser.add_argument('--setting', default='G2s2a2b1', help='SAR: G<g>s<s>a<alpha>b<beta>')
    parser.add_argument('--mask-size', type=int, nargs=3, default=[7, 7, 2],
                        help='SAR: region-selection grid K per SAR stage')
    parser.add_argument('--rates', nargs='+', default=['0.3', '0.5', '0.7'],
                        help="activation rates; config mode also 'source' (the model's "
                        'own masks)')
    parser.add_argument('--input', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, nargs='+', default=[2])
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None, help='JSON path (default under work_dirs/)')
    args = parser.parse_args()
    try:
        args.rates = [parse_rate(r) for r in args.rates]
    except ValueError as error:
        parser.error(str(error))
    if args.config is None and SOURCE in args.rates:
        parser.error("--rates source needs a config (the model's own masks)")
    if args.depth is None:
        args.depth = 50 if args.arch == 'sar' else 101
    args.grid_prior = None if args.grid_prior == 'none' else int(args.grid_prior)
    return args


def build_models(args):
    """``({name: backbone}, dynamic backbones, dense FLOPs per part, title, file stem)``;
    the dense network is named 'dense', the sparse path 'sparse'."""
    if args.arch == 'las':
        las = LASResNet(depth=args.depth, granularity=tuple(args.granularity), init_cfg=None)
        dense = las.static_twin()
        sparse = las.prepare_for_timing()
        models = dict(dense=dense, sparse=sparse)
        granularity = ''.join(map(str, args.granularity))
        return models, [sparse], None, \
            f'LAS-ResNet-{args.depth} S={"-".join(map(str, args.granularity))}', \
            f'las-r{args.depth}-s{granularity}'
    if args.arch == 'sfsi':
        sfsi = SFSIResNet(depth=args.depth, grid_prior_interval=args.grid_prior,
                          sparse_conv3=args.sparse_conv3, init_cfg=None)
        dense = sfsi.static_twin()
        sparse = sfsi.prepare_for_timing()
        prior = 'off' if args.grid_prior is None else f'k={args.grid_prior}'
        return dict(dense=dense, sparse=sparse), [sparse], None, \
            f'SFSI-ResNet-{args.depth} (grid prior {prior}, conv3 {args.sparse_conv3}) vs ' \
            f'ResNet-{args.depth}', f'sfsi-r{args.depth}-grid{args.grid_prior}-{args.sparse_conv3}'
    sar = SARResNet(depth=args.depth, sar_setting=args.setting, mask_size=tuple(args.mask_size),
                    min_input_size=min(args.input), init_cfg=None)
    masked = copy.deepcopy(sar).prepare_for_timing('masked')
    sparse = sar.prepare_for_timing()
    dense = sar.static_twin()
    models = dict(dense=dense, sparse=sparse, masked=masked)
    return models, [sparse, masked], dense_part_flops(dense, args.input), \
        f'SAR-ResNet-{args.depth} {args.setting} K={"-".join(map(str, args.mask_size))} ' \
        f'vs ResNet-{args.depth}', f'sar-r{args.depth}-{args.setting.lower()}'


def measure(args, models, dynamic, dense_flops, x, parts, threads):
    torch.set_num_threads(threads)
    runs = []
    for rate in args.rates:
        for backbone in dynamic:
            backbone.set_forced_activation(rate, seed=args.seed)
        with torch.no_grad():
            models['sparse'](x)
        reference, executed = stage_flops(models['sparse'].records, parts)
        reference = dense_flops or reference  # LAS: its own dense FLOPs (the twin's)
        timed = time_models(models, x, args.warmup, args.repeats)
        (dense_parts, dense_total) = timed['dense']
        stages = {}
        for k, part in enumerate(parts):
            stages[part] = dict(dense_latency_s=dense_parts[k],
                                flops_ratio=executed[part] / reference[part])
            for name in models.keys() - {'dense'}:
                stages[part][f'{name}_latency_s'] = timed[name][0][k]
                stages[part][f'{name}_latency_ratio'] = timed[name][0][k] / dense_parts[k]
        total = dict(dense_latency_s=dense_total,
                     flops_ratio=sum(executed.values()) / sum(reference.values()),
                     gflops_dense=sum(reference.values()) / 1e9,
                     gflops_executed=sum(executed.values()) / 1e9)
        for name in models.keys() - {'dense'}:
            total[f'{name}_latency_s'] = timed[name][1]
            total[f'{name}_latency_ratio'] = timed[name][1] / dense_total
        total['latency_over_flops'] = total['sparse_latency_ratio'] / total['flops_ratio']
        print_rows(rate, threads, stages, total)
        runs.append(dict(threads=threads, rate=rate, stages=stages, total=total))
        if getattr(args, 'profile', False) and args.arch == 'sfsi':
            runs[-1]['profile'] = profile_sparse_parts(models['sparse'], x)
            print('  sparse forward, ms per part:', ', '.join(
                f'{k}={v:.1f}' for k, v in runs[-1]['profile']['parts_ms'].items()))
    return runs


def print_rows(rate, threads, stages, total):
    masked = 'masked_latency_s' in total
    print(f'threads {threads}, rate {rate:.2f}: dense {total["dense_latency_s"] * 1e3:.1f} ms, '
          f'sparse {total["sparse_latency_s"] * 1e3:.1f} ms'
          + (f', masked {total["masked_latency_s"] * 1e3:.1f} ms' if masked else ''))
    for part, row in list(stages.items()) + [('total', total)]:
        line = (f'{rate:5.2f} {part:>7} {row["sparse_latency_s"] * 1e3:9.1f} '
                f'{row["sparse_latency_ratio"]:9.3f} {row["flops_ratio"]:11.3f} '
                f'{row["sparse_latency_ratio"] / row["flops_ratio"]:9.3f}')
        if masked:
            line += f' {row["masked_latency_ratio"]:12.3f}'
        print(line)


def print_config_rows(rows, columns, note: str = ''):
    """One line per row: threads, rate, then ``(title, width, cell(row))`` columns."""
    print(f'{"threads":>7} {"rate":>6} ' + ' '.join(f'{title:>{width}}'
                                                  for title, width, _ in columns)
          + (f'   ({note})' if note else ''))
    for row in rows:
        rate = row['rate'] if row['rate'] == SOURCE else f"{row['rate']:.2f}"
        print(f"{row['threads']:>7} {rate:>6} " + ' '.join(f'{cell(row):>{width}}'
                                                          for _, width, cell in columns))


def run_config(args):
    report = benchmark_config(args.config, args.rates, tuple(args.input), args.threads,
                              args.part, args.checkpoint, args.image, args.batch,
                              args.warmup, args.repeats, args.seed, args.cfg_options,
                              coarse=args.coarse_twin, engine_twin=args.engine_twin)
    print(f"{os.path.basename(args.config)}: {report['part']} {report['backbone']} against "
          f"{report['twin']}, input {'x'.join(map(str, report['input']))}, median of "
          f'{args.repeats} whole calls after {args.warmup} warm-up, default process')
    print_config_rows(report['rows'], [
        ('static ms', 10, lambda r: f"{r['static_s'] * 1e3:.1f}"),
        ('dynamic ms', 10, lambda r: f"{r['dynamic_s'] * 1e3:.1f}"),
        ('lat ratio', 9, lambda r: f"{r['latency_ratio']:.3f}"),
        ('FLOPs ratio', 11, lambda r: f"{r['flops_ratio']:.3f}"),
        ('lat/FLOPs', 9, lambda r: f"{r['latency_over_flops']:.3f}"),
        ('ran FLOPs', 9, lambda r: f"{r['ran_flops_ratio']:.3f}")])
    print('FLOPs ratio: the masks\' FLOPs (the model\'s) over the static twin\'s; ran FLOPs: '
          'what the operators computed, dense routes included, over the same')
    if args.coarse_twin:
        print_config_rows(report['rows'], [
            ('coarse ms', 10, lambda r: f"{r['coarse_s'] * 1e3:.1f}"),
            ('GMACs', 8, lambda r: f"{r['gflops_executed']:.2f}"),
            ('interp ms', 10, lambda r: f"{r['interpolated_s'] * 1e3:.1f}"),
            ('lat/interp', 10, lambda r: f"{r['latency_over_interpolated']:.3f}")],
            'coarse twin: the strided network; interp: the latency on the line between '
            'the twins at these MACs')
    if args.engine_twin:
        print_config_rows(report['rows'], [
            ('engine ms', 10, lambda r: f"{r['engine_s'] * 1e3:.1f}"),
            ('engine/static', 13, lambda r: f"{r['engine_ratio']:.3f}"),
            ('lat/engine', 10, lambda r: f"{r['latency_over_engine']:.3f}")],
            'engine: the static twin run the way mmdyn runs static parts, timed after the '
            'rates against the stock twin')
    report['torch'] = torch.__version__
    stem = os.path.splitext(os.path.basename(args.config))[0]
    return report, f'{stem}-{args.part}-t{"-".join(map(str, args.threads))}'


def main():
    args = parse_args()
    torch.set_flush_denormal(True)  # denormals slow x86 CPUs by orders of magnitude
    if args.config is not None:
        report, stem = run_config(args)
        return save(report, args.out, stem)
    keep_freed_memory()
    torch.manual_seed(args.seed)
    models, dynamic, dense_flops, title, stem = build_models(args)
    x = torch.randn(args.batch, 3, *args.input).contiguous(memory_format=torch.channels_last)
    parts = ['stem'] + list(models['dense'].res_layers)
    print(f'{title}, input {args.batch}x3x{args.input[0]}x{args.input[1]}, median of '
          f'{args.repeats} after {args.warmup} warm-up; BatchNorm folded, channels-last')
    print(f'{"rate":>5} {"part":>7} {"sparse ms":>9} {"lat ratio":>9} {"FLOPs ratio":>11} '
          f'{"lat/FLOPs":>9}' + (f' {"masked ratio":>12}' if 'masked' in models else ''))
    report = dict(config=vars(args), torch=torch.__version__, runs=[])
    for threads in args.threads:
        report['runs'] += measure(args, models, dynamic, dense_flops, x, parts, threads)
    save(report, args.out, f'{stem}-t{"-".join(map(str, args.threads))}')


def save(report: dict, out, stem: str):
    out = out or os.path.join('work_dirs', 'benchmark_latency', f'{stem}.json')
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'saved {out}')


if __name__ == '__main__':
    main()
