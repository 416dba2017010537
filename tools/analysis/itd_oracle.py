"""Oracle evaluation of an ITD-ResNet model over option permutations (Sec. 3.3, 4.2, 4.6
of "The Untapped Potential of Off-the-Shelf CNNs").

    python tools/analysis/itd_oracle.py CONFIG CHECKPOINT --space stride=1,2,3 \\
        [--space kernel_size=1,3] [--positions A B C D] --out-dir DIR [--max-batches N]

Runs every sample of the config's test split under every permutation of the option grid
(the default permutation first: the reference), one forward per permutation and batch,
with a progress bar; per-batch results go to ``DIR/batches`` so an interrupted run
resumes. Writes to ``DIR``: ``summary.json`` (best / median / worst accuracy, or per-image
mIoU for segmentors, per-image AP at IoU 0.5 for detectors; the reference and the best
static permutation; distinct predictions per sample), ``preferences.json`` (per sample: best permutation, Fig. 2 counts),
``accumulation.json``/``.png`` (greedy accumulation curve and the chosen permutations,
Sec. 4.2), ``distinct_predictions.png``, ``efficiency.json`` and ``accuracy_vs_macs.png``
(the cheapest permutation per sample with the reference's prediction, Sec. 4.6, Fig. 6:
run it with a grid such as ``--space stride=1,2,3,4 --space kernel_size=1,3``).
``CHECKPOINT`` may be ``none`` (random init, for smoke tests).
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import mmdyn  # noqa: E402,F401
from mmdyn.analysis.itd import (efficient_oracle, greedy_accumulation,  # noqa: E402
                                oracle_point, oracle_summary, permutation_label,
                                plot_accumulation, plot_accuracy_vs_macs,
                                plot_distinct_predictions, run_oracle, sample_preferences)
from mmdyn.utils import (add_common_args, build_runner, load_config,  # noqa: E402
                         resolve_checkpoint)


def parse_space(items):
    """``['stride=1,2,3', 'kernel_size=1,3']`` -> ``{'stride': (1, 2, 3), ...}``."""
    space = {}
    for item in items:
        name, _, values = item.partition('=')
        if not values:
            raise SystemExit(f'--space {item!r}: expected attribute=v1,v2,... '
                             '(stride, dilation or kernel_size)')
        space[name] = tuple(v if '/' in v else (float(v) if '.' in v else int(v))
                            for v in values.split(','))
    return space


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='a local checkpoint, or "none"')
    parser.add_argument('--space', action='append', required=True,
                        help='attribute=v1,v2,... (repeat for a grid), e.g. stride=1/2,1,2')
    parser.add_argument('--positions', nargs='+', help='dynamic positions to vary '
                        '(default: all); the others keep their default option')
    parser.add_argument('--out-dir', default='work_dirs/itd_oracle')
    parser.add_argument('--max-batches', type=int, help='only the first N test batches')
    parser.add_argument('--accumulate', type=int, default=None,
                        help='length of the greedy accumulation curve (default: all)')
    parser.add_argument('--no-progress', action='store_true')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    cfg.load_from = None
    checkpoint = resolve_checkpoint(args.checkpoint, allow_none=True)
    runner = build_runner(cfg, args.config, args.work_dir or args.out_dir, args.launcher)
    if checkpoint:
        runner.load_checkpoint(checkpoint, map_location='cpu')
    model = runner.model
    if not hasattr(model.backbone, 'permutations'):
        raise SystemExit(f'{args.config}: the backbone is {type(model.backbone).__name__}, '
                         'not an ITD backbone (ITDResNet / ITDResNeXt)')
    permutations = model.backbone.permutations(parse_space(args.space), args.positions)
    default = model.backbone.default_permutation
    if permutations[0] != default:  # the reference of the summary and the efficiency
        permutations = [default] + permutations
    dataloader = runner.test_dataloader
    print(f'{len(permutations)} permutations x {len(dataloader)} batches')
    results = run_oracle(model, dataloader, permutations, os.path.join(args.out_dir, 'batches'),
                         progress=not args.no_progress, max_batches=args.max_batches)
    os.makedirs(args.out_dir, exist_ok=True)

    def dump(name, value):
        with open(os.path.join(args.out_dir, name), 'w') as f:
            json.dump(value, f, indent=1)

    summary = oracle_summary(results)
    summary['space'] = {k: [str(v) for v in vs] for k, vs in parse_space(args.space).items()}
    summary['positions'] = list(args.positions or model.backbone.dynamic_positions)
    summary['oracle_point'] = oracle_point(results)
    dump('summary.json', summary)
    dump('preferences.json', sample_preferences(results))
    chosen, curve = greedy_accumulation(results.quality, args.accumulate)
    dump('accumulation.json', dict(curve=curve, permutations=[
        permutation_label(results.permutations[i]) for i in chosen]))
    plot_accumulation(curve, os.path.join(args.out_dir, 'accumulation.png'),
                      os.path.basename(args.config))
    plot_distinct_predictions(summary['distinct_prediction_counts'],
                              os.path.join(args.out_dir, 'distinct_predictions.png'))
    efficiency = efficient_oracle(results)
    dump('efficiency.json', efficiency)
    plot_accuracy_vs_macs(results, efficiency, os.path.join(args.out_dir, 'accuracy_vs_macs.png'))
    print(json.dumps(dict(best=summary['best'], median=summary['median'],
                          worst=summary['worst'], reference=summary['reference'],
                          accumulation_first=curve[:5], efficiency=efficiency), indent=1))


if __name__ == '__main__':
    main()
