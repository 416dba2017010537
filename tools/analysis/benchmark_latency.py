"""Latency of an mmdyn config's dynamic backbone against its static twin.

Any mmdyn config (DESIGN contract 7; mmdyn/analysis/config_benchmark.py): the config's
backbone against its static twin (the dense network it extends, same weights), whole
calls, both BatchNorm-folded and channels-last, alternating in one process, in the
default process (no allocator tuning); each figure is the median of ``--repeats`` calls
after ``--warmup``. Masks are forced at the rates, or ``source`` (the model's own
maskers / mask source on ``--image``); ``--part model`` times the whole detector /
segmentor / classifier. Prints latency ratios next to executed-FLOPs ratios and saves
JSON::

    python tools/analysis/benchmark_latency.py CONFIG [--checkpoint CKPT] \
        [--rates 0.3 0.5 source] [--image astronaut] [--input H W] [--threads 2 1] \
        [--part backbone|model] [--coarse-twin] [--engine-twin] [--stages [--reference]] \
        [--profile] [--cfg-options KEY=VALUE ...]

``--coarse-twin`` (CAD-ResNet and CAD-VGG configs): the strided network at the base
output stride is timed too, and the latency interpolated between it and the dilated
twin by multiply-adds is printed next to CAD's (e.g. edge masks of several thresholds on
a photo: ``--rates source --image coffee --cfg-options
model.backbone.mask_source.threshold=0.95``). ``--engine-twin``: the static twin is
timed a second time, run the way mmdyn runs the static parts of its backbones
(BatchNorm-folded blocks, measured dense-convolution kernels), after the rates and
against the stock twin only, and the dynamic backbone's latency over it is printed too:
the part of a ratio the masks, not the engine, earn. ``--stages``: the stem and every
stage timed apart in a pass of their own (ResNet backbones), with ``--reference`` the
backbone's reference execution (the dense computation masked) in that pass too.
``--profile`` (SFSI-ResNet): a torch.profiler breakdown of its sparse blocks per part.
Give each thread count its own process for figures you will quote; ``--processes N``
runs the command in N fresh processes one after another and reports each timed
figure's median over them (the stock twin's latency varies between processes by up to
a tenth on a 2-core EPYC; per-stage and profile results stay in each process's report,
under ``processes`` in the JSON). Examples::

    python tools/analysis/benchmark_latency.py \
        configs/las_resnet/faster-rcnn_las-r101-s4471-t05_fpn_1x_coco.py \
        --cfg-options 'model.backbone.granularity=[8,4,7,1]' --stages
    python tools/analysis/benchmark_latency.py \
        configs/sar_resnet/faster-rcnn_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py \
        --input 224 224 --rates 0.5 --stages --reference --threads 2 1
    python tools/analysis/benchmark_latency.py \
        configs/sfsi_resnet/faster-rcnn_sfsi-r101-dcn-w01_fpn_1x_coco.py --profile \
        --rates 0.2 0.4 0.6 --cfg-options model.backbone.dcn=None \
        'model.backbone.stage_with_dcn=(False,False,False,False)'
    python tools/analysis/benchmark_latency.py \
        configs/d2net/hpatches_cad-vgg16-os1-sift512-d25-51-51.py --input 480 640 \
        --rates source --image astronaut --coarse-twin --warmup 1 --repeats 3
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from mmengine.config import DictAction

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis.config_benchmark import (SOURCE, benchmark_config,  # noqa: E402
                                             median_of_processes, parse_rate)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='an mmdyn config')
    parser.add_argument('--checkpoint', default=None, help='weights to load')
    parser.add_argument('--part', choices=('backbone', 'model'), default='backbone',
                        help='time the backbone or the whole model')
    parser.add_argument('--image', default=None,
                        help='a photo (path or skimage.data name) as input')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    parser.add_argument('--coarse-twin', action='store_true',
                        help='CAD-ResNet / CAD-VGG: also time the strided network and '
                        'interpolate between the two twins by multiply-adds')
    parser.add_argument('--engine-twin', action='store_true',
                        help='also time the static twin on mmdyn\'s engine')
    parser.add_argument('--stages', action='store_true',
                        help='also time the stem and every stage apart (ResNet backbones)')
    parser.add_argument('--reference', action='store_true',
                        help='with --stages: also the backbone\'s reference execution '
                        '(the dense computation masked)')
    parser.add_argument('--profile', action='store_true',
                        help='SFSI-ResNet: torch.profiler breakdown of the sparse blocks')
    parser.add_argument('--rates', nargs='+', default=['0.3', '0.5', '0.7'],
                        help="activation rates (CAD: keep ratios), or 'source' (the "
                        "model's own masks)")
    parser.add_argument('--input', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, nargs='+', default=[2])
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--processes', type=int, default=1,
                        help='measure in this many fresh processes, one after another, and '
                        'report the median of each figure (a twin\'s latency varies '
                        'between processes)')
    parser.add_argument('--out', default=None, help='JSON path (default under work_dirs/)')
    args = parser.parse_args()
    if args.processes < 1:
        parser.error(f'--processes {args.processes} must be >= 1')
    try:
        args.rates = [parse_rate(r) for r in args.rates]
    except ValueError as error:
        parser.error(str(error))
    return args


def print_config_rows(rows, columns, note: str = ''):
    """One line per row: threads, rate, then ``(title, width, cell(row))`` columns."""
    print(f'{"threads":>7} {"rate":>6} ' + ' '.join(f'{title:>{width}}'
                                                  for title, width, _ in columns)
          + (f'   ({note})' if note else ''))
    for row in rows:
        rate = row['rate'] if row['rate'] == SOURCE else f"{row['rate']:.2f}"
        print(f"{row['threads']:>7} {rate:>6} " + ' '.join(f'{cell(row):>{width}}'
                                                          for _, width, cell in columns))


def print_stages(row):
    """The stem and stages of one row: milliseconds, ratios to the twin, FLOPs ratio."""
    reference = 'reference_s' in row['stages']['stem']
    rate = row['rate'] if row['rate'] == SOURCE else f"{row['rate']:.2f}"
    print(f"per stage, threads {row['threads']}, rate {rate}:")
    print(f"{'part':>7} {'static ms':>9} {'dynamic ms':>10} {'lat ratio':>9} "
          f"{'FLOPs ratio':>11} {'lat/FLOPs':>9}" + (' reference ratio' if reference else ''))
    for part, cells in row['stages'].items():
        print(f"{part:>7} {cells['static_s'] * 1e3:9.1f} {cells['dynamic_s'] * 1e3:10.1f} "
              f"{cells['dynamic_ratio']:9.3f} {cells['flops_ratio']:11.3f} "
              f"{cells['dynamic_ratio'] / cells['flops_ratio']:9.3f}"
              + (f" {cells['reference_ratio']:15.3f}" if reference else ''))


def run_config(args):
    """Measure in this process (the report and the JSON file's stem)."""
    report = benchmark_config(args.config, args.rates, tuple(args.input), args.threads,
                              args.part, args.checkpoint, args.image, args.batch,
                              args.warmup, args.repeats, args.seed, args.cfg_options,
                              coarse=args.coarse_twin, engine_twin=args.engine_twin,
                              stages=args.stages, reference=args.reference,
                              profile=args.profile)
    print_report(args, report, 'default process')
    report['torch'] = torch.__version__
    return report, file_stem(args)


def run_processes(args, argv):
    """The same command (``argv``) in ``args.processes`` fresh processes one after
    another; each timed figure's median. Each process gets its own ``--out`` and
    ``--processes 1`` last (argparse keeps the last value, whatever abbreviation the
    user typed) and exits the tool with its code on an error."""
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.processes):
            out = os.path.join(tmp, f'{k}.json')
            print(f'-- process {k + 1} of {args.processes}', flush=True)
            done = subprocess.run([sys.executable, __file__, *argv, '--out', out,
                                   '--processes', '1'])
            if done.returncode:
                sys.exit(done.returncode)
            with open(out) as f:
                reports.append(json.load(f))
    report = median_of_processes(reports)
    print_report(args, report, f'each figure the median of {args.processes} processes')
    return report, file_stem(args)


def file_stem(args) -> str:
    stem = os.path.splitext(os.path.basename(args.config))[0]
    return f'{stem}-{args.part}-t{"-".join(map(str, args.threads))}'


def print_report(args, report, where: str):
    print(f"{os.path.basename(args.config)}: {report['part']} {report['backbone']} against "
          f"{report['twin']}, input {'x'.join(map(str, report['input']))}, median of "
          f'{args.repeats} whole calls after {args.warmup} warm-up, {where}')
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
    for row in report['rows']:
        if 'stages' in row:
            print_stages(row)
        if 'profile' in row:
            print(f"rate {row['rate']}: sparse forward, ms per part:", ', '.join(
                f'{k}={v:.1f}' for k, v in row['profile']['parts_ms'].items()))


def main():
    args = parse_args()
    torch.set_flush_denormal(True)  # denormals slow x86 CPUs by orders of magnitude
    if args.processes > 1:
        report, stem = run_processes(args, sys.argv[1:])
    else:
        report, stem = run_config(args)
    save(report, args.out, stem)


def save(report: dict, out, stem: str):
    out = out or os.path.join('work_dirs', 'benchmark_latency', f'{stem}.json')
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'saved {out}')


if __name__ == '__main__':
    main()
