"""Overlays of the patches each dynamic block selected, on the input image."""
import dataclasses
import math
import os

import cv2
import numpy as np

from mmdyn.ops import PatchGrid, patch_extents

SELECTED_TINT = np.array([255, 64, 32], dtype=np.float32)  # RGB


def block_mask_on_input(record, sample: int, input_hw, image_hw, group: int = 0) -> np.ndarray:
    """The block's patch mask (of channel group ``group``) as a boolean ``image_hw`` map.

    ``input_hw`` is the (padded) network input size; the image occupies its top-left
    ``image_hw`` part before resizing, as in mmdet/mmseg batches.
    """
    grid = record.grid
    mask = record.mask[sample, group].detach().float().cpu().numpy()
    full = np.kron(mask, np.ones((grid.patch_h, grid.patch_w), np.float32))
    full = full[:grid.height, :grid.width]
    on_input = cv2.resize(full, (input_hw[1], input_hw[0]), interpolation=cv2.INTER_NEAREST)
    return on_input[:image_hw[0], :image_hw[1]] > 0.5


def overlay(image_rgb: np.ndarray, selected: np.ndarray, label: str = '') -> np.ndarray:
    """Tint the selected pixels, darken the skipped ones, write ``label`` on top."""
    image = image_rgb.astype(np.float32)
    out = np.where(selected[..., None], 0.55 * image + 0.45 * SELECTED_TINT, 0.35 * image)
    out = out.clip(0, 255).astype(np.uint8)
    if label:
        cv2.putText(out, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def _tiles(record, sample: int):
    """(file name, label, group) of every tile a block gets: one per channel group
    (SAR's G masks), or a single one."""
    groups = record.mask.shape[1]
    grid = record.grid
    size = f'S={grid.patch}' if isinstance(grid.patch, int) else f'{grid.rows}x{grid.cols}'
    for group in range(groups):
        suffix = f'.g{group}' if groups > 1 else ''
        area = (record.mask[sample, group] * patch_extents(grid, record.mask.device)).sum()
        rate = float(area) / (grid.height * grid.width)
        yield f'{record.name}{suffix}', f'{record.name}{suffix} {size} r={rate:.2f}', group


def _mask_views(record):
    """The masks a block record holds: its own, and for SFSI-ResNet (records with a
    ``conv1_mask``) conv1's and conv2's pixel masks as ``<block>.conv1`` / ``.conv2``."""
    conv1 = getattr(record, 'conv1_mask', None)
    if conv1 is None:
        return [record]
    grid = PatchGrid(conv1.shape[2], conv1.shape[3], 1)
    return [dataclasses.replace(record, name=f'{record.name}.conv1', mask=conv1, grid=grid),
            dataclasses.replace(record, name=f'{record.name}.conv2')]


def save_block_overlays(image_rgb: np.ndarray, records, sample: int, input_hw,
                        out_dir: str, columns: int = 6) -> list:
    """Write one PNG per block and channel group (``<block>.png``, or
    ``<block>.g<k>.png`` for SAR's G groups, ``<block>.conv1.png`` / ``.conv2.png`` for
    SFSI's two sampled convs) and a mosaic (``all_blocks.png``) of the patches every
    block computed for ``sample``; return the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    image_hw = image_rgb.shape[:2]
    tiles, paths = [], []
    for record in (view for block in records.blocks for view in _mask_views(block)):
        for name, label, group in _tiles(record, sample):
            selected = block_mask_on_input(record, sample, input_hw, image_hw, group)
            tile = overlay(image_rgb, selected, label)
            path = os.path.join(out_dir, f'{name}.png')
            cv2.imwrite(path, cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
            tiles.append(tile)
            paths.append(path)
    rows = math.ceil(len(tiles) / columns)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (rows * columns - len(tiles))
    mosaic = np.vstack([np.hstack(tiles[r * columns:(r + 1) * columns]) for r in range(rows)])
    path = os.path.join(out_dir, 'all_blocks.png')
    cv2.imwrite(path, cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR))
    return paths + [path]


def plot_sparsity_histograms(stats, path: str, bins: int = 20) -> dict:
    """Histograms of per-image activation rate and executed backbone GFLOPs (the
    dataset view of a dynamic network, SAR Fig. 5 style); returns summary numbers."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rates = np.array([s['activation_rate'] for s in stats])
    gflops = np.array([s['backbone_flops_executed'] for s in stats]) / 1e9
    dense = float(np.mean([s['backbone_flops_dense'] for s in stats])) / 1e9
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for axis, values, label in ((axes[0], rates, 'activation rate'),
                                (axes[1], gflops, 'executed backbone GFLOPs')):
        axis.hist(values, bins=bins, color='tab:red', alpha=0.8)
        axis.set_xlabel(label)
        axis.set_ylabel('images')
    axes[1].axvline(dense, color='black', linestyle='--', label='dense')
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

    def summary(values):
        return dict(mean=float(values.mean()), std=float(values.std()),
                    min=float(values.min()), p10=float(np.percentile(values, 10)),
                    median=float(np.median(values)), p90=float(np.percentile(values, 90)),
                    max=float(values.max()))

    return dict(images=len(stats), activation_rate=summary(rates),
                executed_gflops=summary(gflops), dense_gflops=dense)


def plot_block_rates(stats, path: str) -> dict:
    """Mean rate of every dynamic block over the images of ``stats`` (their
    ``block_rates``), one bar per block (SFSI appendix Fig. 2 style); names ending in
    ``.conv1`` / ``.conv2`` (SFSI's two sampled convs) become paired bars. Returns
    ``{name: mean rate}``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(stats[0]['block_rates'])
    means = {n: float(np.mean([s['block_rates'][n] for s in stats])) for n in names}
    series = {}
    for name in names:
        block, _, conv = name.rpartition('.')
        key, block = (conv, block) if conv in ('conv1', 'conv2') and block else ('rate', name)
        series.setdefault(key, {})[block] = means[name]
    blocks = list(dict.fromkeys(b for values in series.values() for b in values))
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.28 * len(blocks)), 3.2))
    for k, (label, values) in enumerate(series.items()):
        axis.bar(np.arange(len(blocks)) + (k - (len(series) - 1) / 2) * width,
                 [values.get(b, np.nan) for b in blocks], width, label=label)
    axis.set_xticks(np.arange(len(blocks)))
    axis.set_xticklabels(blocks, rotation=90, fontsize=6)
    axis.set_ylabel('mean sampling rate')
    axis.set_ylim(0, 1)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return means
