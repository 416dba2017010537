"""Per-image activation rate and executed GFLOPs of a dynamic model over a dataset.

    python tools/analysis/sparsity_histograms.py CONFIG CHECKPOINT [--out-dir DIR]

Runs the config's test loop (``CHECKPOINT`` may be ``none`` for random init), records
every image's statistics through ``SparsityMetric`` and writes ``histograms.png``,
``per_image.json`` and ``summary.json`` to ``--out-dir``; prints the summary. With
``--per-block`` also the mean rate of every block (SFSI-ResNet: of its conv1 and conv2
sampling, appendix Fig. 2) as ``per_block.png`` and ``per_block.json``.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import mmdyn  # noqa: E402,F401
from mmdyn.utils import (add_common_args, build_runner, load_config,  # noqa: E402
                         resolve_checkpoint)
from mmdyn.visualization import plot_block_rates, plot_sparsity_histograms  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='a local checkpoint, or "none"')
    parser.add_argument('--out-dir', default='work_dirs/sparsity_histograms')
    parser.add_argument('--bins', type=int, default=20)
    parser.add_argument('--per-block', action='store_true',
                        help='also plot the mean rate of every block (per_block.png)')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    per_image = os.path.join(args.out_dir, 'per_image.json')
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) \
        else [cfg.test_evaluator]
    cfg.test_evaluator = [e for e in evaluators if e['type'] != 'SparsityMetric'] + [
        dict(type='SparsityMetric', per_block=args.per_block, per_image_file=per_image)]
    cfg.load_from = resolve_checkpoint(args.checkpoint, allow_none=True)
    runner = build_runner(cfg, args.config, args.work_dir or args.out_dir, args.launcher)
    runner.test()
    terms = getattr(runner.model, 'module', runner.model).backbone.mask_terms
    with open(per_image) as f:
        stats = json.load(f)
    summary = plot_sparsity_histograms(stats, os.path.join(args.out_dir, 'histograms.png'),
                                       args.bins, terms, title=Path(args.config).stem)
    if args.per_block:
        rates = plot_block_rates(stats, os.path.join(args.out_dir, 'per_block.png'), terms)
        with open(os.path.join(args.out_dir, 'per_block.json'), 'w') as f:
            json.dump(rates, f, indent=2)
        summary['per_block_png'] = os.path.join(args.out_dir, 'per_block.png')
    with open(os.path.join(args.out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == '__main__':
    main()
