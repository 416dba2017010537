"""Calibrate the latency predictor's CPU profile on this machine.

Measures dispatch cost, GEMM and conv throughput, DRAM and L2 copy bandwidth and the
efficiency of short gathers at the given thread count, fits the ``Hardware``
parameters of LASNet's predictor (mmdyn/latency/calibrate.py) and saves the profile
as ``$MMDYN_LATENCY_DIR`` or ``~/.cache/mmdyn/latency/<cpu>-t<threads>.json`` (plus
``<...>.calibration.json`` with the measurements), from where
``load_profile('cpu')`` / ``--profile cpu`` load it. The measurement takes seconds
(``--quick``: tiny sizes, a rough profile saved as ``<...>-quick.json``). Run it on an
otherwise idle machine, with the thread count you will run the network at::

    python tools/analysis/calibrate_latency.py --threads 2
    python tools/analysis/calibrate_latency.py --threads 1 --out my-cpu.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.latency import calibrate as cal  # noqa: E402
from mmdyn.latency import machine  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 2)[2])
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: the current count)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes, few repeats: seconds, a rough profile (tests)')
    parser.add_argument('--latency-mode', choices=cal.MODES, default='auto',
                        help="how compute and data movement combine; 'auto' keeps the "
                        'better fit (default)')
    parser.add_argument('--out', default=None,
                        help='profile path (.json); default: this machine\'s profile path')
    parser.add_argument('--no-tune-allocator', action='store_true',
                        help='do not keep freed memory (by default the allocator is tuned '
                        'as in benchmark_latency.py and the accuracy study)')
    parser.add_argument('--print-json', action='store_true',
                        help='also print the measurements and the fit as JSON')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise SystemExit('--threads must be >= 1')
    if not args.no_tune_allocator:
        from mmdyn.analysis import keep_freed_memory
        keep_freed_memory()
    result = cal.calibrate_cpu(threads=args.threads, quick=args.quick,
                           latency_mode=args.latency_mode)
    path = cal.save_calibration(result, args.out)
    print(result.summary())
    print(f'saved {path}\n  and {cal.sidecar_path(path)}')
    if args.out is None and not args.quick:
        print(f"load it with load_profile('cpu') at {result.measurements['threads']} "
              f"thread(s), or load_profile('cpu-t{result.measurements['threads']}')")
    elif args.quick:
        print('(quick: a rough profile; load it by path)')
    if args.print_json:
        print(json.dumps(result.as_dict(), indent=2))
    print(f'profile directory: {machine.profile_dir()}')
    return path


if __name__ == '__main__':
    main()
