"""Check that the sparse engine runs, and agrees with its reference, on a device.

    python tools/analysis/check_device.py --device cuda [--size 512 1024] [--batch 2]
    python tools/analysis/check_device.py --device cpu --size 96 128   # what CI runs, smaller

On the device: every dynamic backbone's sparse path against its reference execution
(masked, or dense for CAD; ITD: its one path runs), relative L2 error < 1e-4 in
float32 (TF32 off for the comparisons); one train step and one val step of a
DynFasterRCNN and a DynEncoderDecoder (LAS-ResNet-18) on the offline fixtures; the
latency of LAS-ResNet-50 and SAR-ResNet-50 (sparse at rate 0.5, batch 1) against their
static twins, synchronised, alternating, median of ``--repeats``. Prints a table, writes
JSON (default ``work_dirs/check_device/<device>.json``). Exit status: 0 when every
correctness check passed, 1 when one failed (latency is reported, never a failure), 2
when the device is unknown or unavailable. See docs/device_check.md.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis.device_check import (DeviceUnavailable, resolve_device,  # noqa: E402
                                         run_checks)

MIN_SIDE = 32  # SAR-ResNet's smallest input in the backbone table (min_input_size)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ...')
    parser.add_argument('--size', type=int, nargs=2, default=[96, 128], metavar=('H', 'W'),
                        help='input size of the backbone checks and the latency')
    parser.add_argument('--batch', type=int, default=2, help='batch of the backbone checks')
    parser.add_argument('--repeats', type=int, default=7, help='timed calls per network')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls first')
    parser.add_argument('--threads', type=int, default=None,
                        help="CPU intra-op threads (default: torch's)")
    parser.add_argument('--out', default=None,
                        help='JSON path (default work_dirs/check_device/<device>.json)')
    parser.add_argument('--skip-train', action='store_true',
                        help='no train / val step of the detector and the segmentor')
    parser.add_argument('--skip-latency', action='store_true', help='no timing')
    args = parser.parse_args(argv)
    if min(args.size) < MIN_SIDE:
        parser.error(f'--size {args.size[0]} {args.size[1]}: each side must be >= {MIN_SIDE}')
    for name in ('batch', 'repeats', 'threads'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1')
    if args.warmup < 0:
        parser.error('--warmup must be >= 0')
    return args


def print_report(report: dict):
    print(f"device {report['device']}: {report['device_name']}, torch {report['torch']}, "
          f"{report['date']}; input {report['batch']}x3x{report['size'][0]}x{report['size'][1]}")
    print(f"{'backbone':<14} {'reference':<10} {'rel. L2 error':>13} {'active':>6}  result")
    for row in report['backbones']:
        error = '-' if row['error'] is None else f"{row['error']:.1e}"
        rate = '-' if row['error'] is None else f"{row['activation_rate']:.2f}"
        print(f"{row['name']:<14} {row['reference'] or '(one path)':<10} {error:>13} "
              f"{rate:>6}  {verdict(row)}")
    for key, step in (report['steps'] or {}).items():
        if step.get('model') is None:
            print(f'{key} train/val step: {verdict(step)}')
            continue
        print(f"{step['model']} ({step['backbone']}): train loss {number(step['loss'])}, "
              f"loss_sparsity {number(step['loss_sparsity'])}, {step['predictions']} "
              f"{step['prediction_field']} from val_step  {verdict(step)}")
    for row in report['latency'] or []:
        if row['ratio'] is None:
            print(f"latency {row['name']}: not measured ({row['failure']})")
            continue
        print(f"latency {row['name']} (rate {row['rate']}): static {row['static_ms']:.2f} ms, "
              f"sparse {row['sparse_ms']:.2f} ms, sparse / static {row['ratio']:.2f}")
    print('PASSED' if report['passed'] else 'FAILED')


def number(value) -> str:
    return 'missing' if value is None else f'{value:.4f}'


def verdict(check: dict) -> str:
    return 'ok' if check['passed'] else f"FAIL: {check['failure']}"


def main(argv=None):
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except DeviceUnavailable as error:
        print(f'check_device: {error}', file=sys.stderr)
        sys.exit(2)
    torch.set_flush_denormal(True)  # denormals slow x86 CPUs by orders of magnitude
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_checks(device, tuple(args.size), args.batch, args.repeats, args.warmup,
                        train=not args.skip_train, latency=not args.skip_latency)
    print_report(report)
    out = args.out or os.path.join('work_dirs', 'check_device',
                                   f"{report['device'].replace(':', '-')}.json")
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'saved {out}')
    sys.exit(0 if report['passed'] else 1)


if __name__ == '__main__':
    main()
