"""Analysis of CAD-ResNet (content-adaptive downsampling, Hesse et al., CVPR-W 2023).

* :func:`level_map`: the per-pixel resolution level of a forward (0 = full resolution on
  the output-stride-8 grid, 1 = one 2x2 cell, 2 = one 4x4 cell), rebuilt from the keep
  masks the backbone recorded;
* :func:`save_level_overlays`: the image with that cell grid drawn (paper Fig. 3 style);
* :func:`sweep_masks`: evaluate a segmentation config with several mask sources (the
  strided network, edge masks of increasing density, the dilated network, ...) and
  collect mIoU and executed backbone multiply-adds; :func:`plot_miou_vs_macs` plots them.

``tools/analysis/cad_analysis.py`` is the command line.
"""
import copy
import logging
import os
import re
import uuid

import cv2
import numpy as np
import torch

from mmdyn.ops.flops import ForwardRecord
from mmdyn.ops.multires import step_levels

#: input pixels per pixel of the output-stride-8 map
OUTPUT_STRIDE = 8
FULL_RES_TINT = np.array([255, 64, 32], dtype=np.float32)        # RGB
CELL_COLOURS = {1: (255, 220, 0), 2: (0, 200, 255)}                # 2x2 yellow, 4x4 cyan
GFLOPS_KEY = 'backbone_gflops_executed'


# -- level maps ---------------------------------------------------------------------------

def _forward_record(source) -> ForwardRecord:
    """A :class:`ForwardRecord` from a record, a CAD backbone, or a model holding one."""
    if isinstance(source, ForwardRecord):
        return source
    backbone = getattr(source, 'backbone', source)
    from mmdyn.models.backbones import CADResNet
    if not isinstance(backbone, CADResNet):
        raise TypeError('level_map needs a CAD-ResNet ForwardRecord, a CADResNet or a model '
                        f'with one as backbone; got {type(source).__name__}')
    return backbone.records


def level_map(source) -> np.ndarray:
    """``[B, H8, W8]`` int map of the last CAD-ResNet forward: 0 = full resolution, 1 =
    the pixel belongs to a 2x2 cell, 2 = to a 4x4 cell (all on the output-stride-8 grid).

    ``source``: ``backbone.records`` (a :class:`ForwardRecord`), the CAD backbone, or a
    segmentor / detector with one. Every block records the keep mask of the latest
    adaptive step (block grid of patch 2 after step 1, patch 4 after step 2); the level
    map is rebuilt from them with :func:`step_levels`, exactly as the forward did."""
    record = _forward_record(source)
    if not record.blocks:
        raise ValueError('the record holds no blocks: not a CAD-ResNet forward')
    shapes = {(b.grid.height, b.grid.width) if b.grid is not None else None
              for b in record.blocks}
    patches = [getattr(b.grid, 'patch', None) for b in record.blocks]
    if len(shapes) != 1 or None in shapes or not set(patches) <= {2, 4} \
            or 2 not in patches or patches != sorted(patches):
        raise ValueError('not a CAD-ResNet forward record: its blocks must all share the '
                         'output-stride-8 grid with step-1 (patch 2) then step-2 (patch 4) '
                         f'keep masks; got grids {[b.grid for b in record.blocks]}')
    (height, width), = shapes
    masks = {b.grid.patch: b.mask for b in record.blocks}   # the same for every block of a step
    batch = masks[2].shape[0]
    levels = torch.zeros(batch, height, width, dtype=torch.long, device=masks[2].device)
    for step in (1, 2):
        mask = masks.get(2 ** step)
        if mask is not None:
            levels = step_levels(levels, mask[:, 0].detach() > 0.5, step)
    return levels.cpu().numpy()


def level_fractions(levels: np.ndarray) -> dict:
    """Share of the map's pixels at each level (``{0: .., 1: .., 2: ..}``)."""
    levels = np.asarray(levels)
    return {level: float((levels == level).mean()) for level in (0, 1, 2)}


# -- overlays -----------------------------------------------------------------------------

def _pair(value):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f'stride must be a number or a (y, x) pair, got {value!r}')
        return float(value[0]), float(value[1])
    return float(value), float(value)


def draw_levels(image_rgb: np.ndarray, levels: np.ndarray, stride=OUTPUT_STRIDE,
                alpha: float = 0.45) -> np.ndarray:
    """The RGB image with the cell grid drawn: full-resolution regions tinted, every
    2x2 (yellow) and 4x4 (cyan) cell outlined at its size in input pixels.

    ``levels``: ``[H8, W8]`` (or ``[1, H8, W8]``) from :func:`level_map`; ``stride``:
    image pixels per output-stride-8 pixel (8 at the network's input resolution; a
    ``(y, x)`` pair for an image resized after inference). The image covers the
    top-left part of the map (the rest is the batch padding)."""
    image = np.asarray(image_rgb)
    levels = np.asarray(levels)
    if levels.ndim == 3 and levels.shape[0] == 1:
        levels = levels[0]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image_rgb must be [H, W, 3], got {image.shape}')
    if levels.ndim != 2:
        raise ValueError(f'levels must be [H8, W8] (one image), got {levels.shape}')
    sy, sx = _pair(stride)
    height, width = image.shape[:2]
    rows, cols = levels.shape
    if rows * sy < height - 1e-6 * sy or cols * sx < width - 1e-6 * sx:
        raise ValueError(f'a {rows}x{cols} level map at stride {stride} does not cover a '
                         f'{height}x{width} image')
    ys = np.minimum((np.arange(height) / sy).astype(int), rows - 1)
    xs = np.minimum((np.arange(width) / sx).astype(int), cols - 1)
    full = levels[ys][:, xs] == 0
    out = image.astype(np.float32)
    out[full] = (1 - alpha) * out[full] + alpha * FULL_RES_TINT
    out = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    grid_y, grid_x = np.mgrid[:rows, :cols]
    for level, colour in CELL_COLOURS.items():
        size = 2 ** level
        active = (levels == level) & (grid_y % size == 0) & (grid_x % size == 0)
        for y, x in zip(*np.nonzero(active)):
            y0, x0 = int(round(y * sy)), int(round(x * sx))
            if y0 >= height or x0 >= width:
                continue            # a cell of the padding only
            y1 = min(int(round((y + size) * sy)) - 1, height - 1)
            x1 = min(int(round((x + size) * sx)) - 1, width - 1)
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, 1)
    return out


def save_level_overlays(image_rgb: np.ndarray, levels: np.ndarray, out_path: str,
                        stride=OUTPUT_STRIDE, label: str = None) -> str:
    """Write :func:`draw_levels` of the image as a PNG of the image's size; ``label``
    (default: the share of full-resolution pixels) is written in the top-left corner.
    Returns ``out_path``."""
    out = draw_levels(image_rgb, levels, stride)
    if label is None:
        label = f'full res {level_fractions(levels)[0]:.0%}'
    if label:
        cv2.putText(out, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if not cv2.imwrite(out_path, cv2.cvtColor(out, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {out_path}')
    return out_path


# -- mIoU against multiply-adds -----------------------------------------------------------

def default_settings(thresholds=(2.5, 1.5, 0.95, 0.35), random_keep=(), edge_dilation=11,
                     base_output_stride=16) -> list:
    """The strided network, edge masks at ``thresholds`` (in the given order), random
    masks at ``random_keep`` ratios, and the dilated network, as sweep settings."""
    settings = [dict(name=f'OS{base_output_stride}', mask_source=dict(type='DownsampleAllMask'))]
    settings += [dict(name=f'edge t={t:g}',
                      mask_source=dict(type='EdgeMask', threshold=float(t),
                                       dilation=int(edge_dilation)))
                 for t in thresholds]
    settings += [dict(name=f'random keep={k:g}',
                      mask_source=dict(type='RandomMask', keep_ratio=float(k)))
                 for k in random_keep]
    settings.append(dict(name='OS8', mask_source=dict(type='FullResolutionMask')))
    return settings


def _slug(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9.=-]+', '_', name).strip('_') or 'setting'


def _with_sparsity_metric(evaluator):
    """The test evaluator config with a :class:`SparsityMetric` (added if missing)."""
    evaluator = copy.deepcopy(evaluator)
    holder = evaluator
    if isinstance(evaluator, dict) and 'metrics' in evaluator:
        metrics = evaluator['metrics']
        metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
        holder = None
    else:
        metrics = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
    if not any(str(m.get('type', '')).endswith('SparsityMetric') for m in metrics):
        metrics.append(dict(type='SparsityMetric', per_block=False))
    if holder is None:
        evaluator['metrics'] = metrics
        return evaluator
    return metrics


def _metric(metrics: dict, suffix: str, what: str):
    keys = [k for k in metrics if k == suffix or k.endswith('/' + suffix)]
    if not keys:
        raise KeyError(f'the test evaluation reported no {what} ({suffix!r}); got '
                       f'{sorted(metrics)}')
    return float(metrics[keys[0]])


def _close_log_files(runner):
    for handler in list(runner.logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            runner.logger.removeHandler(handler)


def sweep_masks(config, checkpoint, settings, work_dir, seed: int = 0,
                cfg_options: dict = None) -> list:
    """Evaluate ``config`` (a path or an mmengine ``Config``) on its test set once per
    setting with mmengine's Runner and return one row per setting.

    ``settings``: ``[{'name': ..., 'mask_source': {...}}, ...]`` (see
    :func:`default_settings`); each replaces ``model.backbone.mask_source``.
    ``checkpoint``: a local checkpoint (``load_from``) or None for random init; the
    runner's seed is fixed (``seed``), so random weights are the same for every setting.
    A ``SparsityMetric`` is added to the test evaluator when the config has none.

    Row keys: ``name``, ``mask_source``, ``miou`` (percent), ``gmacs`` (mean executed
    backbone multiply-adds per image, 1e9; SparsityMetric's ``backbone_gflops_executed``,
    which counts one multiply-add as one FLOP), ``gmacs_dense`` (the output-stride-8
    network's), ``activation_rate``, ``work_dir``, ``metrics`` (everything reported)."""
    from mmengine.config import Config

    from mmdyn.utils import build_runner
    base = copy.deepcopy(config) if isinstance(config, Config) else Config.fromfile(config)
    config_path = getattr(base, 'filename', None) or 'config.py'
    if cfg_options:
        base.merge_from_dict(cfg_options)
    names = [s['name'] for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f'setting names must be unique, got {names}')
    rows = []
    for index, setting in enumerate(settings):
        cfg = copy.deepcopy(base)
        cfg.model.backbone.mask_source = copy.deepcopy(dict(setting['mask_source']))
        run_dir = os.path.join(str(work_dir), f'{index:02d}_{_slug(setting["name"])}')
        cfg.load_from = checkpoint
        cfg.resume = False
        cfg.randomness = dict(seed=seed)
        # unique names: several runners live in one process (logger, visualizer, ...)
        tag = f'cad_sweep_{index:02d}_{_slug(setting["name"])}_{uuid.uuid4().hex[:6]}'
        cfg.experiment_name = tag
        if cfg.get('visualizer') is not None:
            cfg.visualizer.name = tag
        cfg.test_evaluator = _with_sparsity_metric(cfg.test_evaluator)
        runner = build_runner(cfg, config_path, work_dir=run_dir)
        try:
            metrics = runner.test()
        finally:
            _close_log_files(runner)
        metrics = {k: float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v
                   for k, v in metrics.items()}
        rows.append(dict(
            name=setting['name'], mask_source=dict(setting['mask_source']),
            miou=_metric(metrics, 'mIoU', 'mIoU'),
            gmacs=_metric(metrics, GFLOPS_KEY, 'executed backbone GFLOPs'),
            gmacs_dense=_metric(metrics, 'backbone_gflops_dense', 'dense backbone GFLOPs'),
            activation_rate=_metric(metrics, 'activation_rate', 'activation rate'),
            work_dir=run_dir, metrics=metrics))
        del runner
    return rows


def _mask_type(row) -> str:
    return str(row['mask_source'].get('type', ''))


def plot_miou_vs_macs(rows, path: str, title: str = None) -> str:
    """mIoU against executed backbone GMACs: the strided (``DownsampleAllMask``) and
    dilated (``FullResolutionMask``) networks as labelled points, every other mask
    source (edge thresholds, random ratios, ...) as one line, ordered by GMACs (the
    line of increasing density), each point labelled by its setting's name."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    anchors = {'DownsampleAllMask': ('s', 'tab:blue'), 'FullResolutionMask': ('D', 'tab:red')}
    series = {}
    for row in rows:
        kind = _mask_type(row)
        if kind in anchors:
            marker, colour = anchors[kind]
            ax.scatter([row['gmacs']], [row['miou']], marker=marker, s=60, color=colour,
                       zorder=3)
            ax.annotate(row['name'], (row['gmacs'], row['miou']), textcoords='offset points',
                        xytext=(6, 6), fontsize=9, color=colour, fontweight='bold')
        else:
            series.setdefault(kind, []).append(row)
    palette = ['tab:green', 'tab:orange', 'tab:purple', 'tab:brown', 'tab:pink', 'tab:olive']
    for (kind, members), colour in zip(series.items(), palette * 4):
        members = sorted(members, key=lambda r: r['gmacs'])
        label = f'CAD {kind[:-4] if kind.endswith("Mask") else kind}'.strip()
        ax.plot([r['gmacs'] for r in members], [r['miou'] for r in members], '-o',
                color=colour, label=label, zorder=2)
        for r in members:
            ax.annotate(r['name'], (r['gmacs'], r['miou']), textcoords='offset points',
                        xytext=(4, -12), fontsize=7, color=colour)
    ax.set_xlabel('backbone GMACs per image (executed)')
    ax.set_ylabel('mIoU (%)')
    ax.set_title(title or 'CAD-ResNet: mIoU vs. multiply-adds')
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(loc='best', fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
