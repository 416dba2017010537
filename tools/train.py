"""Train an mmdet or mmseg model from a config (mmdyn configs and stock ones alike).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG NPROC [args...]     # torchrun, gloo on CPU
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmdyn  # noqa: E402,F401  (registers mmdyn modules, fixes checkpoint loading)
from mmdyn.utils import (add_common_args, build_runner,  # noqa: E402
                         check_metrics_computed, finish_distributed,
                         last_validation_metrics, load_config, run_tool)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the '
                        'work dir when no path is given')
    parser.add_argument('--amp', action='store_true', help='mixed precision training')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'RandomStateHook' for h in hooks):
        # exact resume: the torch random state travels with the checkpoints
        cfg.custom_hooks = hooks + [dict(type='RandomStateHook')]
    runner = build_runner(cfg, args.config, args.work_dir, args.launcher)
    runner.train()
    finish_distributed()
    if cfg.get('val_evaluator') and cfg.get('val_dataloader'):
        try:  # the training ran: an empty validation is reported, not a failure
            check_metrics_computed(cfg.val_evaluator, last_validation_metrics(runner))
        except RuntimeError as empty:
            print(f'train.py: the last validation: {empty}', file=sys.stderr)


if __name__ == '__main__':
    run_tool(main)
