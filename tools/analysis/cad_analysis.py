"""CAD-ResNet analysis: mIoU against multiply-adds over mask settings, and level maps.

    # evaluate the config's test set with the strided network (DownsampleAllMask), edge
    # masks at each threshold (increasing density), random masks, and the dilated network
    python tools/analysis/cad_analysis.py sweep CONFIG CHECKPOINT|none \
        --thresholds 2.5 1.5 0.95 0.35 [--random-keep 0.3] --out-dir DIR
    # -> DIR/sweep.json, DIR/miou_vs_macs.png (runner logs under DIR/runs/)

    # the cell grid CAD chose for each image (full resolution tinted, 2x2 / 4x4 cells
    # outlined; paper Fig. 3 style)
    python tools/analysis/cad_analysis.py masks CONFIG CHECKPOINT|none IMG [IMG ...] \
        --out-dir DIR
    # -> DIR/<image stem>.png

CHECKPOINT ``none`` means random initialisation. Works with mmseg configs whose model is
a ``DynEncoderDecoder`` with a ``CADResNet`` backbone.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import mmdyn  # noqa: E402,F401
from mmdyn.analysis.cad import (OUTPUT_STRIDE, default_settings,  # noqa: E402
                                level_fractions, level_map, plot_miou_vs_macs,
                                save_level_overlays, sweep_masks)
from mmdyn.utils import resolve_checkpoint  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)

    sweep = sub.add_parser('sweep', help='mIoU vs. executed backbone GMACs over masks')
    sweep.add_argument('config')
    sweep.add_argument('checkpoint', help='a local checkpoint, or "none" for random init')
    sweep.add_argument('--thresholds', type=float, nargs='*', default=[2.5, 1.5, 0.95, 0.35],
                       help='EdgeMask thresholds (on the normalised grey gradient)')
    sweep.add_argument('--edge-dilation', type=int, default=None,
                       help="EdgeMask dilation (default: the config's, else 11)")
    sweep.add_argument('--random-keep', type=float, nargs='*', default=[],
                       help='RandomMask keep ratios to add')
    sweep.add_argument('--seed', type=int, default=0,
                       help='runner seed (the random init when CHECKPOINT is none)')
    sweep.add_argument('--out-dir', default='work_dirs/cad_analysis')

    masks = sub.add_parser('masks', help='level-map overlays of images')
    masks.add_argument('config')
    masks.add_argument('checkpoint', help='a local checkpoint, or "none" for random init')
    masks.add_argument('images', nargs='+')
    masks.add_argument('--device', default=None, help='default: cuda:0 if available, else cpu')
    masks.add_argument('--out-dir', default='work_dirs/cad_levels')
    for command in (sweep, masks):
        command.add_argument('--cfg-options', nargs='+', action=DictAction,
                             help='override config settings, key=value')
    return parser.parse_args(argv)


def _config(args):
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    backbone = cfg.get('model', {}).get('backbone', {})
    if not str(backbone.get('type', '')).endswith('CADResNet'):
        raise SystemExit(f'{args.config}: the backbone is {backbone.get("type")!r}, not '
                         'CADResNet')
    return cfg


def run_sweep(args):
    cfg = _config(args)
    checkpoint = resolve_checkpoint(args.checkpoint, allow_none=True)
    backbone = cfg.model.backbone
    dilation = args.edge_dilation
    if dilation is None:
        source = backbone.get('mask_source', {}) or {}
        dilation = source.get('dilation', 11) if source.get('type') == 'EdgeMask' else 11
    settings = default_settings(args.thresholds, args.random_keep, dilation,
                                backbone.get('base_output_stride', 16))
    os.makedirs(args.out_dir, exist_ok=True)
    rows = sweep_masks(cfg, checkpoint, settings, os.path.join(args.out_dir, 'runs'),
                       seed=args.seed)
    title = f'{Path(args.config).stem}' + (' (random init)' if checkpoint is None else '')
    plot = plot_miou_vs_macs(rows, os.path.join(args.out_dir, 'miou_vs_macs.png'),
                             title=title[:70])
    out = os.path.join(args.out_dir, 'sweep.json')
    with open(out, 'w') as f:
        json.dump(dict(config=args.config, checkpoint=checkpoint, rows=rows), f, indent=2)
    print(f'{"setting":>20} {"GMACs":>8} {"dense":>8} {"rate":>6} {"mIoU":>7}')
    for row in rows:
        print(f'{row["name"]:>20} {row["gmacs"]:8.2f} {row["gmacs_dense"]:8.2f} '
              f'{row["activation_rate"]:6.3f} {row["miou"]:7.2f}')
    print(f'wrote {out} and {plot}')


def run_masks(args):
    import cv2
    from mmseg.apis import inference_model, init_model
    cfg = _config(args)
    checkpoint = resolve_checkpoint(args.checkpoint, allow_none=True)
    if args.device is None:
        import torch
        args.device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    model = init_model(cfg, checkpoint, device=args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    for image_path in args.images:
        image = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f'cannot read image: {image_path}')
        result = inference_model(model, image_path)
        levels = level_map(model.backbone.records)[0]
        # the network saw the image resized to img_shape (top-left of the padded batch)
        img_h, img_w = result.metainfo['img_shape'][:2]
        stride = (OUTPUT_STRIDE * image.shape[0] / img_h, OUTPUT_STRIDE * image.shape[1] / img_w)
        path = os.path.join(args.out_dir, f'{Path(image_path).stem}.png')
        save_level_overlays(image[..., ::-1], levels, path, stride=stride)
        shares = level_fractions(levels)
        print(f'{image_path}: {path} (full res {shares[0]:.1%}, 2x2 cells {shares[1]:.1%}, '
              f'4x4 cells {shares[2]:.1%} of the output-stride-8 map)')


def main(argv=None):
    args = parse_args(argv)
    {'sweep': run_sweep, 'masks': run_masks}[args.command](args)


if __name__ == '__main__':
    main()
