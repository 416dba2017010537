"""Predicted latency ratio of LAS-ResNet blocks against activation rate and patch size.

Figures of LASNet's predictor (mmdyn/latency) on a profile, as the paper's Fig. 5 and
Fig. 6: for one block per stage of LAS-ResNet-``depth`` at an input size (block
``--block-index`` of each stage: by default the second, stride 1, no projection),
the latency ratio r_l = dynamic / static against the activation rate for S in
``--sizes`` (``ratio_vs_rate.png``) and against S at ``--fixed-rate`` over the stage's
candidate sizes (``ratio_vs_size.png``), with the numbers in ``predict_latency.json``.

``--measure`` overlays measured ratios of the real mmdyn blocks on this machine (sparse
path, BatchNorm folded, masks forced to the rate, the dense fallback off; static twin
alternating), only for a profile calibrated on this CPU (``--profile cpu``).
``--accuracy`` runs the accuracy study instead (predicted vs measured latency of the
blocks over S x rates; mean absolute relative error, worst stage, Spearman, fastest-S
agreement; ``accuracy.json`` and ``accuracy.png``); at full size (LAS-ResNet-101,
800 x 1216, 5 S x 10 rates x 4 stages) it takes minutes. ::

    python tools/analysis/predict_latency.py --profile v100 --input 224 224 --out DIR
    python tools/analysis/predict_latency.py --profile cpu --measure --threads 2 --out DIR
    python tools/analysis/predict_latency.py --profile cpu --accuracy --threads 2 --out DIR
    python tools/analysis/predict_latency.py --profile cpu --config CONFIG --rates 0.3 0.5

``--config`` predicts a whole LAS-ResNet or SAR-ResNet backbone of a config (stem and
static parts included) and its static twin at ``--rates`` (SAR needs a profile
calibrated on this CPU: the engine model).
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.latency import load_profile  # noqa: E402
from mmdyn.latency import accuracy as acc  # noqa: E402
from mmdyn.latency.machine import is_this_machine  # noqa: E402
from mmdyn.latency.predictor import latency_ratio  # noqa: E402
from mmdyn.latency.search import candidate_sizes, check_rate  # noqa: E402
from mmdyn.utils import add_debug_arg, run_tool  # noqa: E402

COLORS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown',
          'tab:pink', 'tab:gray')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 2)[2])
    parser.add_argument('--profile', required=True,
                        help="a shipped profile (v100, tx2, ...), 'cpu' (calibrated on this "
                        'machine, tools/analysis/calibrate_latency.py) or a .json path')
    parser.add_argument('--depth', type=int, default=101, choices=(50, 101, 152))
    parser.add_argument('--input', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='input size (default 800 1216; paper figures: 224 224; with '
                        "--config: the config's test pipeline)")
    parser.add_argument('--config', default=None,
                        help='whole-backbone prediction of a LAS-ResNet or SAR-ResNet config '
                        'at --rates (default 0.3 0.5 0.7) instead of the figures')
    parser.add_argument('--from-forward', action='store_true',
                        help='with --config: the rates of every block recorded in one forward '
                        "of the config's model (its own masks) on --image")
    parser.add_argument('--image', default=None,
                        help='--from-forward input: an image file or a skimage.data name '
                        '(default: seeded noise)')
    parser.add_argument('--checkpoint', default=None, help='--from-forward: model weights')
    parser.add_argument('--block-index', type=int, default=1,
                        help='which block of each stage (>= 1); default 1')
    parser.add_argument('--sizes', type=int, nargs='+', default=list(acc.DEFAULT_SIZES))
    parser.add_argument('--rates', type=float, nargs='+', default=None,
                        help='rates of the curves (default 0.05 .. 1.0); with --accuracy '
                        'the measured rates (default 0.1 .. 1.0)')
    parser.add_argument('--fixed-rate', type=float, default=0.5, help='rate of Fig. 6')
    parser.add_argument('--measure', action='store_true',
                        help='overlay measured ratios of real mmdyn blocks on this machine')
    parser.add_argument('--measure-rates', type=float, nargs='+',
                        default=[0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument('--accuracy', action='store_true',
                        help='predicted vs measured accuracy study (minutes at full size)')
    parser.add_argument('--threads', type=int, default=None,
                        help="measurement threads (default: the profile's, else current)")
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--passes', type=int, default=1,
                        help='with --accuracy: measure the whole grid this many times, '
                        'one pass after the other, to see which fastest S the measurement '
                        'itself reproduces (default 1)')
    parser.add_argument('--no-tune-allocator', action='store_true',
                        help='measure in the default process (no kept freed memory)')
    parser.add_argument('--out', default='work_dirs/latency_predictor', help='output folder')
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    if args.config is None and (args.from_forward or args.image or args.checkpoint):
        parser.error('--from-forward, --image and --checkpoint need --config')
    if args.input is None and args.config is None:
        args.input = [800, 1216]
    return args


def stage_shapes(args):
    return acc.stage_blocks(args.depth, tuple(args.input), args.block_index)


def curves(hw, args):
    """Fig. 5 (ratio vs rate per S) and Fig. 6 (ratio vs S at the fixed rate) data."""
    rates = args.rates or [round(0.05 * k, 2) for k in range(1, 21)]
    fig5, fig6 = {}, {}
    for stage, cin, mid, cout, h, w in stage_shapes(args):
        shape = (hw, cin, mid, cout, h, w)
        fig5[stage + 1] = {S: [latency_ratio(*shape, S, r, 1, False) for r in rates]
                           for S in args.sizes if S <= min(h, w)}
        sizes = sorted(set(candidate_sizes(h, w)) | {S for S in args.sizes if S <= min(h, w)})
        fig6[stage + 1] = dict(sizes=sizes, ratios=[
            latency_ratio(*shape, S, args.fixed_rate, 1, False) for S in sizes], h=h, w=w)
    return rates, fig5, fig6


def profile_threads(name: str):
    match = re.search(r'-t(\d+)(-quick)?$', name)
    return int(match.group(1)) if match else None


def measurement_threads(hw, args):
    own = profile_threads(hw.name) if is_this_machine(hw.name) else None
    if args.threads is not None and own is not None and args.threads != own:
        print(f'note: profile {hw.name} was calibrated at {own} thread(s); measuring at '
              f'{args.threads}')
    return args.threads or own


def plot_curves(hw, args, rates, fig5, fig6, measured, out: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    shapes = {s[0] + 1: s for s in stage_shapes(args)}
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex=True)
    for ax, (stage, per_size) in zip(axes.ravel(), fig5.items()):
        for k, (S, ratios) in enumerate(per_size.items()):
            ax.plot(rates, ratios, color=COLORS[k % len(COLORS)], label=f'S={S}')
            pts = [p for p in measured if p['stage'] + 1 == stage and p['S'] == S]
            if pts:
                ax.plot([p['patches'] / p['cells'] for p in pts], [p['ratio'] for p in pts],
                        'o', color=COLORS[k % len(COLORS)], markersize=4)
        _, cin, mid, cout, h, w = shapes[stage]
        ax.axhline(1.0, color='k', linewidth=0.6, linestyle='--')
        ax.set_title(f'stage {stage}: {cin}-{mid}-{cout}, {h}x{w}', fontsize=9)
        ax.set_xlabel('activation rate r')
        ax.set_ylabel('latency ratio (dynamic / static)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title='lines: predicted' + (', dots: measured' if measured
                                                          else ''), title_fontsize=7)
    fig.suptitle(f'LAS-ResNet-{args.depth} block {args.block_index} per stage, input '
                 f'{args.input[0]}x{args.input[1]}, profile {hw.name}', fontsize=10)
    fig.tight_layout()
    fig.savefig(out / 'ratio_vs_rate.png', dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for k, (stage, row) in enumerate(fig6.items()):
        ax.plot(row['sizes'], row['ratios'], '-', color=COLORS[k], marker='.',
                label=f'stage {stage} ({row["h"]}x{row["w"]})')
        pts = [p for p in measured if p['stage'] + 1 == stage
               and math.isclose(p['rate'], args.fixed_rate)]
        if pts:
            ax.plot([p['S'] for p in pts], [p['ratio'] for p in pts], 'o', color=COLORS[k],
                    markersize=6, markerfacecolor='none')
    ax.set_xscale('log', base=2)
    ticks = sorted({S for row in fig6.values() for S in row['sizes']})
    ax.set_xticks(ticks, [str(S) for S in ticks], fontsize=7)
    ax.minorticks_off()
    ax.axhline(1.0, color='k', linewidth=0.6, linestyle='--')
    ax.set_xlabel('patch size S')
    ax.set_ylabel(f'latency ratio at r = {args.fixed_rate:g}')
    ax.set_title(f'LAS-ResNet-{args.depth}, {args.input[0]}x{args.input[1]}, profile '
                 f'{hw.name}' + ('\n(circles: measured)' if measured else ''), fontsize=9)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'ratio_vs_size.png', dpi=120)
    plt.close(fig)


def plot_accuracy(result, out: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = result['points_detail']
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (pred, meas, scale, unit) in zip(axes, (
            ('predicted_dynamic', 'dynamic', 1e3, 'ms'), ('predicted_ratio', 'ratio', 1, ''))):
        for k, stage in enumerate(sorted({r['stage'] for r in rows})):
            mine = [r for r in rows if r['stage'] == stage]
            ax.plot([r[meas] * scale for r in mine], [r[pred] * scale for r in mine], '.',
                    color=COLORS[k], label=f'stage {stage + 1}')
        values = [r[k] * scale for r in rows for k in (pred, meas)]
        lo, hi = min(values), max(values)
        ax.plot([lo, hi], [lo, hi], 'k--', linewidth=0.7)
        ax.set_xscale('log')
        ax.set_yscale('log')
        label = 'dynamic block latency' + (f' ({unit})' if unit else '')
        ax.set_xlabel(('measured ' + label) if unit else 'measured latency ratio')
        ax.set_ylabel(('predicted ' + label) if unit else 'predicted latency ratio')
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=8)
    fig.suptitle(f'profile {result["hardware"]}: mean |rel. error| '
                 f'{result["mean_abs_rel_error"]:.3f} (ratio '
                 f'{result["mean_abs_rel_error_ratio"]:.3f}), Spearman '
                 f'{result["spearman"]:.3f}, fastest-S agreement '
                 f'{result["fastest_s_agreement"]:.2f}', fontsize=10)
    fig.tight_layout()
    fig.savefig(out / 'accuracy.png', dpi=120)
    plt.close(fig)


def check_args(args, hw):
    if args.block_index < 1:
        raise ValueError('--block-index must be >= 1')
    for rate in (args.rates or []) + args.measure_rates + [args.fixed_rate]:
        check_rate(rate)
    if any(s < 1 for s in args.sizes):
        raise ValueError('--sizes must be positive')
    if args.measure and not is_this_machine(hw.name):
        raise ValueError(f'--measure overlays measurements of this machine: use a profile '
                         f'calibrated on it (--profile cpu), not {hw.name!r}')
    if args.accuracy and not is_this_machine(hw.name):
        print(f'note: profile {hw.name!r} was not calibrated on this CPU; its absolute '
              'latencies are not expected to match, the ranks and ratios may')


def tune_allocator(args):
    if not args.no_tune_allocator:
        from mmdyn.analysis import keep_freed_memory
        keep_freed_memory()


def run_accuracy(hw, args, out: Path):
    tune_allocator(args)
    result = acc.accuracy_study(hw, args.sizes, args.rates or acc.DEFAULT_RATES,
                                tuple(args.input), args.depth,
                                measurement_threads(hw, args), args.repeats, args.warmup,
                                args.block_index, progress=print, passes=args.passes)
    (out / 'accuracy.json').write_text(json.dumps(result, indent=2) + '\n')
    plot_accuracy(result, out)
    print(acc.format_summary(result))
    print(f'took {result["seconds"]:.1f} s; wrote {out / "accuracy.json"} and '
          f'{out / "accuracy.png"}')
    return result


def run_network(hw, args, out: Path):
    """Whole-backbone latency of ``args.config`` (LAS-ResNet or SAR-ResNet) and of its
    static twin at each rate; ``network.json``."""
    from mmengine.config import Config
    from mmdyn.latency import layout_from_config, predict_backbone
    from mmdyn.latency.sar import predict_sar_config
    from mmdyn.latency.search import input_size_from_config
    cfg = Config.fromfile(args.config).to_dict()
    input_hw = input_size_from_config(cfg) if args.input is None else tuple(args.input)
    sar = cfg['model']['backbone'].get('type') == 'SARResNet'
    if sar:
        def predict(rates):
            return predict_sar_config(hw, cfg, input_hw, rates)
    else:
        layout = layout_from_config(cfg, input_hw)

        def predict(rates):
            return predict_backbone(hw, layout, rate=rates)
    rates = args.rates or [0.3, 0.5, 0.7]
    if args.from_forward:
        rates = [recorded_rates(args, input_hw, sar)]
    rows = []
    for rate in rates:
        net = predict(rate)
        label = f'{rate:g}' if isinstance(rate, float) else 'recorded: ' + ' / '.join(
            ' '.join(f'{r:.2f}' for r in stage) for stage in rate)
        print(f'r = {label}: ' + net.summary())
        rows.append(dict(rate=rate, dynamic_ms=net.dynamic * 1e3, static_ms=net.static * 1e3,
                         ratio=net.ratio, input=list(net.input_hw)))
    report = dict(profile=hw.name, config=args.config, rows=rows)
    (out / 'network.json').write_text(json.dumps(report, indent=2) + '\n')
    print(f'wrote {out / "network.json"}')
    return report


def recorded_rates(args, input_hw, sar: bool):
    """Per-stage, per-block rates of one forward of the config's model (its own masks)."""
    import torch
    from mmdyn.analysis.config_benchmark import build_model_offline, input_batch
    from mmdyn.latency import rates_from_record
    model = build_model_offline(args.config, args.checkpoint)
    with torch.no_grad():
        model.backbone(input_batch(model, input_hw, image=args.image))
    backbone = model.backbone
    layers = [getattr(backbone, name) for name in backbone.res_layers]
    blocks = [len(layer.refine) if sar else len(layer) for layer in layers
              if not sar or hasattr(layer, 'refine')]
    return rates_from_record(backbone.records.blocks, blocks)


def main(argv=None):
    args = parse_args(argv)
    hw = load_profile(args.profile)
    check_args(args, hw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.config is not None:
        return run_network(hw, args, out)
    if args.accuracy:
        return run_accuracy(hw, args, out)
    rates, fig5, fig6 = curves(hw, args)
    measured = []
    if args.measure:
        tune_allocator(args)
        measure_rates = sorted(set(args.measure_rates) | {args.fixed_rate})
        points = acc.measure_las_blocks(args.sizes, measure_rates, tuple(args.input),
                                        args.depth, measurement_threads(hw, args),
                                        args.repeats, args.warmup,
                                        block_index=args.block_index, progress=print)
        measured = acc.predict_points(hw, points)
    plot_curves(hw, args, rates, fig5, fig6, measured, out)
    report = dict(profile=hw.name, depth=args.depth, input=args.input,
                  block_index=args.block_index, rates=rates,
                  ratio_vs_rate={str(k): {str(S): v for S, v in d.items()}
                                 for k, d in fig5.items()},
                  fixed_rate=args.fixed_rate,
                  ratio_vs_size={str(k): v for k, v in fig6.items()}, measured=measured)
    (out / 'predict_latency.json').write_text(json.dumps(report, indent=2) + '\n')
    for stage, row in fig6.items():
        best = min(zip(row['ratios'], row['sizes']))
        print(f'stage {stage} ({row["h"]}x{row["w"]}): predicted ratio at r = '
              f'{args.fixed_rate:g}: ' + ', '.join(
                  f'S={S} {r:.3f}' for S, r in zip(row['sizes'], row['ratios'])
                  if S in args.sizes) + f'; lowest S={best[1]} ({best[0]:.3f})')
    print(f'wrote {out / "ratio_vs_rate.png"}, {out / "ratio_vs_size.png"} and '
          f'{out / "predict_latency.json"}')
    return report


if __name__ == '__main__':
    run_tool(main)
