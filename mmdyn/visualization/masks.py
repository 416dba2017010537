"""Overlays of the patches each dynamic block selected, on the input image."""
import dataclasses
import math
import os

import cv2
import numpy as np

from mmdyn.ops import MaskTerms, PatchGrid, patch_extents

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


def _text_scale(width: int) -> float:
    """OpenCV font scale that stays legible from 96 px to 1,600 px wide images."""
    return min(max(width / 640, 0.35), 0.8)


def _put_label(image: np.ndarray, text: str) -> None:
    """Write ``text`` at the top left on a black band (legible on any photo)."""
    scale = _text_scale(image.shape[1])
    (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    image[:height + base + 6, :width + 8] = 0
    cv2.putText(image, text, (4, height + 3), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)


def overlay(image_rgb: np.ndarray, selected: np.ndarray, label: str = '') -> np.ndarray:
    """Tint the selected pixels, darken the skipped ones, write ``label`` on top."""
    image = image_rgb.astype(np.float32)
    out = np.where(selected[..., None], 0.55 * image + 0.45 * SELECTED_TINT, 0.35 * image)
    out = out.clip(0, 255).astype(np.uint8)
    if label:
        _put_label(out, label)
    return out


def legend_strip(width: int, terms: MaskTerms = MaskTerms()) -> np.ndarray:
    """A ``width``-wide band explaining the overlay's colours in the method's words:
    a tinted swatch for ``terms.selected``, a darkened one for ``terms.skipped``."""
    scale = _text_scale(width)
    height = int(28 * max(scale / 0.5, 0.8))
    strip = np.full((height, width, 3), 255, np.uint8)
    grey = np.full(3, 160, np.float32)
    swatches = ((0.55 * grey + 0.45 * SELECTED_TINT, terms.selected), (0.35 * grey, terms.skipped))
    x, box = 4, height - 10
    for colour, text in swatches:
        strip[5:5 + box, x:x + box] = colour.astype(np.uint8)
        cv2.putText(strip, text, (x + box + 4, 5 + box - 3), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (0, 0, 0), 1, cv2.LINE_AA)
        x += box + 12 + cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    return strip


def _tiles(record, sample: int, terms: MaskTerms):
    """(file name, label, group) of every tile a block gets: one per channel group
    (SAR's G masks), or a single one."""
    groups = record.mask.shape[1]
    grid = record.grid
    size = f'S={grid.patch}' if isinstance(grid.patch, int) else f'{grid.rows}x{grid.cols}'
    for group in range(groups):
        suffix = f'.g{group}' if groups > 1 else ''
        area = (record.mask[sample, group] * patch_extents(grid, record.mask.device)).sum()
        rate = float(area) / (grid.height * grid.width)
        label = f'{record.name}{suffix} {size} {terms.rate} {rate:.2f}'
        yield f'{record.name}{suffix}', label, group


def _mask_views(record):
    """The masks a block record holds: its own, and for SFSI-ResNet (records with a
    ``conv1_mask``) conv1's and conv2's pixel masks as ``<block>.conv1`` / ``.conv2``."""
    conv1 = getattr(record, 'conv1_mask', None)
    if conv1 is None:
        return [record]
    grid = PatchGrid(conv1.shape[2], conv1.shape[3], 1)
    return [dataclasses.replace(record, name=f'{record.name}.conv1', mask=conv1, grid=grid),
            dataclasses.replace(record, name=f'{record.name}.conv2')]


def _mosaic_pages(tiles, columns: int, rows_per_page: int, page_width: int):
    """Split ``tiles`` into pages of ``columns`` x ``rows_per_page`` tiles, each tile
    shrunk so that a page is at most ``page_width`` pixels wide."""
    height, width = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    scale = min(1.0, page_width / (columns * width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = [cv2.resize(t, size, interpolation=cv2.INTER_AREA) if scale < 1 else t
             for t in tiles]
    per_page = columns * rows_per_page
    for start in range(0, len(small), per_page):
        page = small[start:start + per_page]
        rows = math.ceil(len(page) / columns)
        page += [np.full_like(page[0], 255)] * (rows * columns - len(page))
        yield np.vstack([np.hstack(page[r * columns:(r + 1) * columns]) for r in range(rows)])


def save_block_overlays(image_rgb: np.ndarray, records, sample: int, input_hw,
                        out_dir: str, terms: MaskTerms = MaskTerms(), columns: int = 4,
                        rows_per_page: int = 4, page_width: int = 1600) -> list:
    """Write one PNG per block and channel group (``<block>.png``, or
    ``<block>.g<k>.png`` for SAR's G groups, ``<block>.conv1.png`` / ``.conv2.png`` for
    SFSI's two sampled convs) and mosaics of the patches every block computed for
    ``sample``: ``all_blocks.png``, or ``all_blocks_1.png``, ``all_blocks_2.png``, ...
    when there are more than ``columns x rows_per_page`` tiles, each page at most
    ``page_width`` pixels wide. Every PNG ends in a legend in the method's words
    (``terms``, a backbone's ``mask_terms``); return the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    image_hw = image_rgb.shape[:2]
    tiles, paths = [], []
    for record in (view for block in records.blocks for view in _mask_views(block)):
        for name, label, group in _tiles(record, sample, terms):
            selected = block_mask_on_input(record, sample, input_hw, image_hw, group)
            tile = overlay(image_rgb, selected, label)
            path = os.path.join(out_dir, f'{name}.png')
            write_with_legend(path, tile, terms)
            tiles.append(tile)
            paths.append(path)
    pages = list(_mosaic_pages(tiles, columns, rows_per_page, page_width))
    for number, page in enumerate(pages, 1):
        suffix = f'_{number}' if len(pages) > 1 else ''
        path = os.path.join(out_dir, f'all_blocks{suffix}.png')
        write_with_legend(path, page, terms)
        paths.append(path)
    return paths


def write_with_legend(path: str, image_rgb: np.ndarray, terms: MaskTerms) -> None:
    """Save an overlay (RGB) as ``path`` with :func:`legend_strip` below it."""
    framed = np.vstack([image_rgb, legend_strip(image_rgb.shape[1], terms)])
    cv2.imwrite(path, cv2.cvtColor(framed, cv2.COLOR_RGB2BGR))


def plot_sparsity_histograms(stats, path: str, bins: int = 20,
                             terms: MaskTerms = MaskTerms(), title: str = '') -> dict:
    """Histograms of per-image rate (``terms.rate``) and executed backbone GFLOPs
    (the dataset view of a dynamic network, SAR Fig. 5 style), counts of images on
    integer ticks; returns summary numbers."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    rates = np.array([s['activation_rate'] for s in stats])
    gflops = np.array([s['backbone_flops_executed'] for s in stats]) / 1e9
    dense = float(np.mean([s['backbone_flops_dense'] for s in stats])) / 1e9
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, values, label in ((axes[0], rates, f'{terms.rate} per image'),
                                (axes[1], gflops, 'executed backbone GFLOPs per image')):
        axis.hist(values, bins=bins, color='tab:red', alpha=0.8)
        axis.set_xlabel(label)
        axis.set_ylabel('images')
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].axvline(dense, color='black', linestyle='--', label='dense (static) backbone')
    axes[1].legend()
    figure.suptitle(title or f'{len(stats)} images: {terms.rate} and executed GFLOPs')
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


def plot_block_rates(stats, path: str, terms: MaskTerms = MaskTerms()) -> dict:
    """Mean rate (``terms.rate``) of every dynamic block over the images of ``stats`` (their
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
    axis.set_ylabel(f'mean {terms.rate}')
    axis.set_title(f'mean {terms.rate} of every block over {len(stats)} images')
    axis.set_ylim(0, 1)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return means
