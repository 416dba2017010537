"""The learning study on the digits (issue 13): accuracy against executed multiply-adds,
what the masks select, and sparse-path latency, for classifiers trained from configs.

A method is one config under ``configs/learning_study/`` trained with several seeds. For
each trained checkpoint :func:`evaluate_classifier` runs the test split through the
config's own evaluators (mmpretrain's ``Accuracy`` and, for dynamic backbones,
mmdyn's ``SparsityMetric``) and counts, per stage, how often the masks select ink:

    ink rate        = |selected & ink| / |ink|              over the test images
    background rate = |selected & ~ink| / |~ink|
    ink preference  = ink rate / background rate            (> 1: the masker prefers ink)

"selected" is a pixel of the input image covered by a patch (LAS) or region (SAR,
every group) that the block computes at full resolution; "ink" a pixel brighter than
:data:`INK_THRESHOLD` in the 64x64 grey digit (strokes are bright, background is 0).
"""
import json
import math
import os
import statistics
from collections import defaultdict

import numpy as np
import torch

from mmdyn.analysis.complexity import backbone_conv_macs
from mmdyn.visualization.masks import block_mask_on_input

#: grey level above which a pixel of the upsampled digit counts as ink (0..255)
INK_THRESHOLD = 128


def ink_map(inputs: torch.Tensor) -> np.ndarray:
    """``[B, H, W]`` bool ink pixels of a batch of uint8 ``[B, C, H, W]`` grey images."""
    return inputs[:, 0].cpu().numpy() > INK_THRESHOLD


def add_ink_counts(counts: dict, records, ink: np.ndarray):
    """Add one batch to ``counts`` (``{name: [ink selected, ink, bg selected, bg]}``,
    per stage ``'layer1'`` and per block ``'layer1.0'``) for every block record
    (``records.blocks``) and every mask group."""
    input_hw = ink.shape[1:]
    for record in records.blocks:
        tallies = [counts.setdefault(key, [0, 0, 0, 0])
                   for key in (record.name.split('.')[0], record.name)]
        for sample in range(ink.shape[0]):
            for group in range(record.mask.shape[1]):
                selected = block_mask_on_input(record, sample, input_hw, input_hw, group)
                found = (int((selected & ink[sample]).sum()), int(ink[sample].sum()),
                         int((selected & ~ink[sample]).sum()), int((~ink[sample]).sum()))
                for tally in tallies:
                    for k, value in enumerate(found):
                        tally[k] += value


def ink_preference(counts: dict) -> dict:
    """``{stage: {ink_rate, background_rate, preference}}`` from :func:`add_ink_counts`.
    A stage that selects no background pixel at all has preference ``inf`` (or ``nan``
    when it selects nothing)."""
    out = {}
    for stage, (ink_sel, ink, bg_sel, bg) in sorted(counts.items()):
        ink_rate = ink_sel / ink if ink else float('nan')
        bg_rate = bg_sel / bg if bg else float('nan')
        if bg_rate == 0:
            preference = float('inf') if ink_rate > 0 else float('nan')
        else:
            preference = ink_rate / bg_rate
        out[stage] = dict(ink_rate=ink_rate, background_rate=bg_rate, preference=preference)
    return out


def build_classifier(cfg, checkpoint=None):
    """The config's model in mmpretrain's scope, the checkpoint loaded, in eval mode."""
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    model.eval()
    return model


def is_dynamic(model) -> bool:
    return hasattr(model.backbone, 'sparsity_summary')


@torch.no_grad()
def evaluate_classifier(cfg, checkpoint, max_batches=None) -> dict:
    """Test-split metrics of one trained classifier, through the config's evaluators:
    ``accuracy`` (top-1, %), backbone GMACs per image executed and dense, activation
    rate, and per-stage ink preference for dynamic backbones."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    model = build_classifier(cfg, checkpoint)
    loader = Runner.build_dataloader(cfg.test_dataloader)
    evaluator = Evaluator(cfg.test_evaluator)
    dynamic = is_dynamic(model)
    counts, seen = {}, 0
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        data = model.data_preprocessor(batch, False)
        samples = model(**data, mode='predict')
        evaluator.process(samples, batch)
        if dynamic:
            add_ink_counts(counts, model.backbone.records, ink_map(torch.stack(batch['inputs'])))
        seen += len(samples)
    metrics = evaluator.evaluate(seen)
    input_hw = tuple(batch['inputs'][0].shape[1:])
    result = dict(accuracy=float(metrics['accuracy/top1']), images=seen,
                  input_hw=list(input_hw))
    if dynamic:
        result.update(gmacs=metrics['sparsity/backbone_gflops_executed'],
                      gmacs_dense=metrics['sparsity/backbone_gflops_dense'],
                      activation_rate=metrics['sparsity/activation_rate'],
                      flops_ratio=metrics['sparsity/flops_ratio'],
                      ink=ink_preference(counts))
    else:
        result.update(gmacs=backbone_conv_macs(model.backbone, input_hw) / 1e9)
        result['gmacs_dense'] = result['gmacs']
    return result


def mean_std(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float('nan'), float('nan')
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_method(name: str, runs: list, target=None) -> dict:
    """One table row from the per-seed :func:`evaluate_classifier` results."""
    row = dict(method=name, seeds=len(runs), target=target)
    for key in ('accuracy', 'gmacs', 'activation_rate', 'flops_ratio'):
        if key in runs[0]:
            row[key], row[f'{key}_std'] = mean_std([r[key] for r in runs])
    if 'ink' in runs[0]:
        stages = sorted(runs[0]['ink'])  # stages ('layer1') and blocks ('layer1.0')
        row['ink_preference'] = {s: mean_std([r['ink'][s]['preference'] for r in runs])[0]
                                 for s in stages}
        row['ink_rate'] = {s: mean_std([r['ink'][s]['ink_rate'] for r in runs])[0]
                           for s in stages}
        row['background_rate'] = {s: mean_std([r['ink'][s]['background_rate']
                                               for r in runs])[0] for s in stages}
    return row


def _fmt(value, digits=3):
    return '-' if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f'{value:.{digits}f}'


def format_table(rows: list, latency: dict = None) -> str:
    """Markdown: top-1 mean +- std, GMACs, activation / FLOPs ratio against the target,
    latency against the static network."""
    latency = latency or {}
    lines = ['| method | target | seeds | top-1 (%) | backbone GMACs / image | FLOPs ratio | '
             'activation rate | latency / static |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        lat = latency.get(r['method'], {}).get('ratio')
        lines.append(
            f"| {r['method']} | {_fmt(r['target'], 1)} | {r['seeds']} | "
            f"{r['accuracy']:.1f} +- {r['accuracy_std']:.1f} | {r['gmacs']:.4f} | "
            f"{_fmt(r.get('flops_ratio'))} | {_fmt(r.get('activation_rate'))} | "
            f"{_fmt(lat, 2)} |")
    return '\n'.join(lines)


def format_ink_table(rows: list, blocks: bool = False) -> str:
    """Markdown: per stage (or per block), ink rate / background rate (preference)."""
    dynamic = [r for r in rows if 'ink_preference' in r]
    if not dynamic:
        return ''
    stages = sorted({s for r in dynamic for s in r['ink_preference']
                     if ('.' in s) == blocks})
    lines = ['| method | ' + ' | '.join(stages) + ' |',
             '|---|' + '---:|' * len(stages)]
    for r in dynamic:
        cells = [f"{_fmt(r['ink_rate'].get(s), 2)} / {_fmt(r['background_rate'].get(s), 2)} "
                 f"({_fmt(r['ink_preference'].get(s), 2)})" for s in stages]
        lines.append(f"| {r['method']} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_accuracy_vs_gmacs(rows: list, path: str, family_of) -> str:
    """One curve per method family (static, LAS, SAR, ...): top-1 (mean, std as error
    bars) against executed backbone GMACs per image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    families = defaultdict(list)
    for r in rows:
        families[family_of(r['method'])].append(r)
    for family, members in families.items():
        members = sorted(members, key=lambda r: r['gmacs'])
        ax.errorbar([m['gmacs'] for m in members], [m['accuracy'] for m in members],
                    yerr=[m['accuracy_std'] for m in members], marker='o', capsize=3,
                    label=family, linestyle='-' if len(members) > 1 else 'none')
    ax.set_xlabel('executed backbone GMACs per image')
    ax.set_ylabel('top-1 accuracy on the test split (%)')
    ax.set_title('digits 64x64: accuracy against computation')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def save_mask_overlays(cfg, checkpoint, out_dir: str, num_images: int = 6) -> list:
    """Per block, the selected patches on the first ``num_images`` test digits
    (mmdyn.visualization's overlay), one PNG per block tiling the digits."""
    import cv2

    from mmdyn.visualization import overlay, write_with_legend
    from mmengine.runner import Runner
    model = build_classifier(cfg, checkpoint)
    loader = Runner.build_dataloader(cfg.test_dataloader)
    batch = next(iter(loader))
    batch = {key: batch[key][:num_images] for key in ('inputs', 'data_samples')}
    data = model.data_preprocessor(batch, False)
    model(**data, mode='predict')
    images = [img.permute(1, 2, 0).cpu().numpy() for img in batch['inputs']]
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for record in model.backbone.records.blocks:
        for group in range(record.mask.shape[1]):
            tiles = []
            for sample, image in enumerate(images):
                hw = image.shape[:2]
                selected = block_mask_on_input(record, sample, hw, hw, group)
                big = cv2.resize(image, (128, 128), interpolation=cv2.INTER_NEAREST)
                big_sel = cv2.resize(selected.astype(np.uint8), (128, 128),
                                     interpolation=cv2.INTER_NEAREST) > 0
                tiles.append(overlay(big, big_sel))
            suffix = f'.g{group}' if record.mask.shape[1] > 1 else ''
            path = os.path.join(out_dir, f'{record.name}{suffix}.png')
            write_with_legend(path, np.concatenate(tiles, axis=1), model.backbone.mask_terms)
            paths.append(path)
    return paths


def write_json(path: str, payload) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
    return path


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def test_batch(cfg, model) -> torch.Tensor:
    """The first test batch of the config, preprocessed by ``model`` (normalised)."""
    from mmengine.runner import Runner
    batch = next(iter(Runner.build_dataloader(cfg.test_dataloader)))
    return model.data_preprocessor(batch, False)['inputs']


def prepare_for_latency(backbone):
    """As a deployed model runs: eval mode (a dynamic backbone's default execution),
    every BatchNorm folded by mmcv's ``fuse_conv_bn``, channels-last."""
    from mmcv.cnn import fuse_conv_bn
    backbone.eval()  # mmdet's ResNet.eval() returns None: do not chain
    return fuse_conv_bn(backbone).to(memory_format=torch.channels_last)


@torch.no_grad()
def time_backbones(backbones: dict, x: torch.Tensor, warmup: int, repeats: int) -> dict:
    """Median seconds of one whole ``backbone(x)`` call per backbone, alternating."""
    from mmdyn.analysis.timing import time_alternating
    x = x.contiguous(memory_format=torch.channels_last)
    return time_alternating({name: (lambda b=b: b(x)) for name, b in backbones.items()},
                            warmup, repeats)
