"""Analysis of CAD-VGG on HPatches (Hesse et al., CVPR-W 2023, Sec. 4.3, Fig. 6-7).

* :func:`evaluate_methods`: features of every image of the sequences for each method
  (by name, :mod:`mmdyn.models.keypoints.methods`, or from feature files), the MMA
  protocol of :mod:`mmdyn.evaluation.hpatches_mma`, and the mean multiply-adds;
* :func:`plot_mma_curves` (MMA against threshold, per method) and
  :func:`plot_mma_vs_macs` (MMA@3 against multiply-adds, the paper's Fig. 6);
* :func:`save_pool_overlays`: per adaptive pool, the image with the blocks that pool
  downsampled drawn as cells and the kept ones tinted (Fig. 7), through
  :func:`mmdyn.analysis.cad.save_level_overlays`.
"""
import os

import numpy as np

from mmdyn.analysis.cad import save_level_overlays
from mmdyn.datasets.hpatches import list_sequences, load_image
from mmdyn.evaluation.hpatches_mma import THRESHOLDS, sequence_results, summarize


def pool_level_maps(levels: np.ndarray, num_steps: int):
    """For adaptive pool s = 1..num_steps: a 0/1 map on the grid before that pool
    (fine grid subsampled by 2^(s-1)): 1 where the pool merged the 2x2 block."""
    levels = np.asarray(levels)
    return [(levels[::2 ** (s - 1), ::2 ** (s - 1)] >= s).astype(np.int64)
            for s in range(1, num_steps + 1)]


def save_pool_overlays(image_rgb: np.ndarray, levels: np.ndarray, output_stride: int,
                       num_steps: int, out_prefix: str) -> list:
    """One PNG per adaptive pool, ``<out_prefix>.pool<k>.png`` (k = the VGG pool index);
    returns the paths."""
    paths = []
    for step, binary in enumerate(pool_level_maps(levels, num_steps), 1):
        pool = 3 - num_steps + step
        stride = output_stride * 2 ** (step - 1)
        height, width = image_rgb.shape[:2]
        need_h, need_w = -(-height // stride), -(-width // stride)
        binary = np.pad(binary, ((0, max(0, need_h - binary.shape[0])),
                                 (0, max(0, need_w - binary.shape[1]))), mode='edge')
        label = f'pool{pool}: kept {1 - binary.mean():.0%}'
        paths.append(save_level_overlays(image_rgb, binary, f'{out_prefix}.pool{pool}.png',
                                         stride=stride, label=label))
    return paths


def read_feature_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'feature file {path} is missing (run '
                                'tools/d2net/extract_features.py with the same extension)')
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    if 'macs' in out:
        out['macs'] = float(out['macs'])
    return out


def evaluate_methods(root: str, methods=(), extensions=(), checkpoint='hed',
                     num_keypoints: int = 512, progress: bool = True, exclude=None,
                     thresholds=THRESHOLDS) -> dict:
    """``{name: metrics}`` for methods by name and for feature files ``<image>.<ext>``."""
    from mmdyn.datasets.hpatches import EXCLUDED_SEQUENCES
    from mmdyn.models.keypoints import build_method
    sequences = list_sequences(root, EXCLUDED_SEQUENCES if exclude is None else exclude)
    results = {}
    jobs = [(name, 'method') for name in methods] + [(ext, 'file') for ext in extensions]
    for name, kind in jobs:
        extractor = build_method(name, checkpoint=checkpoint, num_keypoints=num_keypoints) \
            if kind == 'method' else None
        rows = []
        iterator = sequences
        if progress:
            from tqdm import tqdm
            iterator = tqdm(sequences, desc=name, leave=False)
        for seq in iterator:
            if extractor is None:
                features = [read_feature_file(f'{p}.{name}') for p in seq.image_paths]
            else:
                features = [extractor(load_image(p)) for p in seq.image_paths]
            rows.append(sequence_results(seq.name, seq.kind, features, seq.homographies,
                                         thresholds))
        results[name] = summarize(rows, thresholds)
    return results


def format_table(results: dict, thresholds=range(1, 11)) -> str:
    """Markdown table: MMA@1..10 (overall), MMA@3 illumination / viewpoint, GMACs."""
    head = ['method'] + [f'@{t}' for t in thresholds] + ['i@3', 'v@3', 'matches', 'GMACs']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, m in results.items():
        cells = [name] + [f"{m[f'mma@{t}']:.3f}" for t in thresholds]
        cells += [f"{m.get('mma_i@3', float('nan')):.3f}", f"{m.get('mma_v@3', float('nan')):.3f}",
                  f"{m['mean_matches']:.0f}", f"{m['gmacs']:.2f}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _axes():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_mma_curves(results: dict, path: str, thresholds=range(1, 11)) -> str:
    plt = _axes()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110, sharey=True)
    for ax, (suffix, title) in zip(axes, (('', 'Overall'), ('_i', 'Illumination'),
                                          ('_v', 'Viewpoint'))):
        for name, m in results.items():
            if f'mma{suffix}@1' in m:
                ax.plot(list(thresholds), [m[f'mma{suffix}@{t}'] for t in thresholds], '-o',
                        markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel('threshold (px)')
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel('MMA')
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_mma_vs_macs(results: dict, path: str, threshold: int = 3) -> str:
    """MMA@threshold against GMACs per image (methods without a network, such as SIFT,
    are drawn as a horizontal line)."""
    plt = _axes()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for name, m in results.items():
        value = m[f'mma@{threshold}']
        if m['gmacs'] == 0:
            ax.axhline(value, color='grey', linestyle='--', linewidth=1)
            ax.text(0.01, value, f' {name} (no network)', transform=ax.get_yaxis_transform(),
                    va='bottom', fontsize=8, color='grey')
            continue
        colour = 'tab:red' if name.startswith('cad') else 'tab:blue'
        ax.scatter([m['gmacs']], [value], color=colour, zorder=3)
        ax.annotate(name, (m['gmacs'], value), textcoords='offset points', xytext=(4, 4),
                    fontsize=7)
    ax.set_xscale('log')
    ax.set_xlabel('descriptor network GMACs per image')
    ax.set_ylabel(f'MMA@{threshold}')
    ax.set_title(f'HPatches: MMA@{threshold} vs. multiply-adds')
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def network_image(extractor, image_rgb: np.ndarray) -> np.ndarray:
    """The image as the extractor's network saw it (after the size limits / fit)."""
    from mmdyn.models.keypoints.preprocess import fit_image
    return fit_image(image_rgb, extractor.max_edge, extractor.max_sum_edges, 8,
                     extractor.size_mode).image
