"""Choose LAS-ResNet's patch size S per stage by predicted latency.

Reads the LASResNet backbone of an mmdet/mmseg config (depth, strides, stem, its own
granularity; the input size from the test pipeline, or ``--input``), takes as
candidates of a stage the divisors of its feature map (not the full map; the last stage
stays at S = 1, LASNet Sec. 3.2), and picks the S of every stage (``--per-block``: of
every block) with the smallest latency predicted on a profile at activation rate r.
Prints the predicted latency ratio (dynamic / static twin) of the chosen S and of the
config's own S; ``--write-config`` writes a config inheriting the original with the
chosen granularity::

    python tools/analysis/search_granularity.py \\
        configs/las_resnet/faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py \\
        --profile cpu --rate 0.5 --write-config work_dirs/searched.py
    python tools/analysis/search_granularity.py CONFIG --profile v100 --rate 0.4 \\
        --input 800 1344 --per-block --candidates 1 2 4 7 8
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.latency import load_profile  # noqa: E402
from mmdyn.latency.search import (derived_config_text, layout_from_config,  # noqa: E402
                                  search_granularity)
from mmdyn.utils import add_debug_arg, run_tool  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 2)[2])
    parser.add_argument('config', help='an mmdet/mmseg config with a LASResNet backbone')
    parser.add_argument('--profile', required=True,
                        help="hardware profile: a shipped name (v100, tx2, ...), 'cpu' "
                        '(calibrated on this machine) or a .json path')
    parser.add_argument('--rate', type=float, required=True,
                        help='activation rate r in (0, 1] of every block')
    parser.add_argument('--per-block', action='store_true', help='one S per block')
    parser.add_argument('--input', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='backbone input size (default: from the test pipeline)')
    parser.add_argument('--candidates', type=int, nargs='+', default=None,
                        help='S candidates for every stage (default: divisors of the map)')
    parser.add_argument('--tolerance', type=float, default=0.0,
                        help='take the smallest S within this relative margin of the '
                        'fastest (LASNet picks S where the curve flattens); default 0')
    parser.add_argument('--write-config', default=None, metavar='OUT',
                        help='write a config inheriting CONFIG with the chosen S')
    parser.add_argument('--json', default=None, help='save the result as JSON')
    add_debug_arg(parser)
    return parser.parse_args(argv)


def load_config(path: str):
    from mmengine.config import Config
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config not found: {path}')
    return Config.fromfile(path)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config)
    layout = layout_from_config(cfg, tuple(args.input) if args.input else None)
    result = search_granularity(load_profile(args.profile), layout, args.rate,
                                per_block=args.per_block, candidates=args.candidates,
                                tolerance=args.tolerance)
    print(result.describe())
    if args.write_config:
        out = Path(args.write_config)
        if out.suffix != '.py':
            raise SystemExit(f'--write-config must name a .py file, got {out}')
        out.parent.mkdir(parents=True, exist_ok=True)
        config, folder = Path(args.config).resolve(), out.parent.resolve()
        # relative when both lie under one project folder, absolute otherwise
        base = os.path.relpath(config, folder) \
            if os.path.commonpath([config, folder]) != config.anchor else str(config)
        out.write_text(derived_config_text(base, result))
        print(f'wrote {out}')
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            config=args.config, profile=result.hardware, rate=result.rate,
            tolerance=result.tolerance,
            per_block=result.per_block, input=list(layout.input_hw),
            candidates=[list(c) for c in result.candidates],
            granularity=[g if isinstance(g, int) else list(g) for g in result.granularity],
            configured_granularity=[g if isinstance(g, int) else list(g)
                                    for g in layout.granularity],
            predicted_ms=result.best.dynamic * 1e3, predicted_ratio=result.best.ratio,
            configured_ms=result.configured.dynamic * 1e3,
            configured_ratio=result.configured.ratio, static_ms=result.best.static * 1e3,
            stage_costs_ms=[{str(s): v * 1e3 for s, v in c.items()} for c in result.costs],
            notes=list(layout.notes)), indent=2) + '\n')
    return result


if __name__ == '__main__':
    run_tool(main)
