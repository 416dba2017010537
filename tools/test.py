"""Evaluate a checkpoint of an mmdet or mmseg model (mmdyn configs and stock ones).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out preds.pkl] [--fuse-conv-bn]
    bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [args...]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmdyn  # noqa: E402,F401  (registers mmdyn modules, fixes checkpoint loading)
from mmdyn.utils import (add_common_args, build_runner,  # noqa: E402
                         check_metrics_computed, finish_distributed, load_config,
                         resolve_checkpoint, run_tool)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (a local path)')
    parser.add_argument('--out', help='dump predictions to this pickle file')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='fold BatchNorm into the preceding convs before testing '
                        '(mmcv fuse_conv_bn; slightly faster, same outputs)')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    checkpoint = resolve_checkpoint(args.checkpoint)
    cfg = load_config(args)
    cfg.load_from = checkpoint
    if args.out:
        evaluators = cfg.test_evaluator
        evaluators = list(evaluators) if isinstance(evaluators, list) else [evaluators]
        cfg.test_evaluator = evaluators + [dict(type='DumpResults', out_file_path=args.out)]
    if args.fuse_conv_bn:
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='FuseConvBNHook')]
    runner = build_runner(cfg, args.config, args.work_dir, args.launcher)
    metrics = runner.test()
    finish_distributed()
    check_metrics_computed(cfg.test_evaluator, metrics)


if __name__ == '__main__':
    run_tool(main)
