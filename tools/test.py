"""Evaluate a checkpoint of an mmdet or mmseg model (mmdyn configs and stock ones).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
"""
import argparse
import os
import sys
from pathlib import Path

from mmengine.config import Config, DictAction

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmdyn  # noqa: E402,F401  (registers mmdyn modules, fixes checkpoint loading)
from mmdyn.utils import build_runner  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (a local path)')
    parser.add_argument('--work-dir', help='directory for the evaluation log')
    parser.add_argument('--out', help='dump predictions to this pickle file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint not found: {args.checkpoint}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.load_from = args.checkpoint
    if args.out:
        cfg.test_evaluator = [*(cfg.test_evaluator if isinstance(cfg.test_evaluator, list)
                                else [cfg.test_evaluator]),
                              dict(type='DumpResults', out_file_path=args.out)]
    runner = build_runner(cfg, args.config, args.work_dir, args.launcher)
    runner.test()


if __name__ == '__main__':
    main()
