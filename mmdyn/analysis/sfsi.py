"""SFSI-ResNet studies: its dense twin for timing, a per-part profile of the sparse
forward, the inference-stability study (appendix Table 3: metric and GFLOPs over
sampling seeds, with and without the grid prior) and the pruning-compatibility study
(appendix Table 4: global magnitude pruning of the backbone, then params, GFLOPs and
the metric per ratio).

GFLOPs are 1e9 multiply-accumulates (SparsityMetric's ``backbone_gflops_*``).
"""
import copy
import os
import statistics
import uuid
from collections import defaultdict

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from mmdyn.models.backbones import SFSIResNet
from .cad import _close_log_files, _metric, _with_sparsity_metric

#: the record_function labels of the sparse bottleneck (SFSIBottleneck)
PROFILE_PARTS = ('sfsi.mask_heads', 'sfsi.conv1', 'sfsi.interp1', 'sfsi.conv2',
                 'sfsi.conv3_interp2')
TASK_METRICS = ('bbox_mAP', 'mIoU', 'accuracy/top1')


def build_sfsi_backbone(depth: int, **kwargs) -> SFSIResNet:
    return SFSIResNet(depth=depth, init_cfg=None, **kwargs)


@torch.no_grad()
def profile_sparse_parts(backbone, x, repeats: int = 2) -> dict:
    """Milliseconds per forward spent in each part of the sparse bottlenecks
    (:data:`PROFILE_PARTS`, summed over blocks), in the stem, and in the whole pass,
    from ``torch.profiler`` (mean over ``repeats`` profiled passes after one warm-up);
    plus the ten most expensive aten ops."""
    backbone(x)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            with torch.profiler.record_function('sfsi.forward'):
                backbone(x)
    parts = defaultdict(float)
    ops = []
    for event in prof.key_averages():
        if event.key in PROFILE_PARTS or event.key == 'sfsi.forward':
            parts[event.key] = event.cpu_time_total / 1e3 / repeats
        elif event.key.startswith('aten::'):
            ops.append((event.key, event.self_cpu_time_total / 1e3 / repeats))
    blocks = sum(parts[p] for p in PROFILE_PARTS)
    parts['outside_blocks'] = parts['sfsi.forward'] - blocks
    ops.sort(key=lambda item: -item[1])
    return dict(parts_ms=dict(parts), top_ops_self_ms=dict(ops[:10]))


# -- evaluation runs (mmengine Runner, one per setting) --------------------------------

def _task_metric(metrics: dict):
    for suffix in TASK_METRICS:
        if any(k == suffix or k.endswith('/' + suffix) for k in metrics):
            return suffix, _metric(metrics, suffix, suffix)
    raise KeyError(f'no task metric among {sorted(metrics)}; expected one of {TASK_METRICS}')


def evaluate(config, checkpoint, work_dir, tag: str, cfg_options: dict = None,
             prepare_model=None, seed: int = 0) -> dict:
    """Run ``config``'s test loop once (``checkpoint`` a local file or None) and
    return every metric it reports; ``prepare_model(model)`` runs after the weights
    load (e.g. pruning). A SparsityMetric is added when the model is a Dyn* model."""
    from mmengine.config import Config
    from mmengine.hooks import Hook

    from mmdyn.utils import build_runner
    cfg = copy.deepcopy(config) if isinstance(config, Config) else Config.fromfile(config)
    config_path = getattr(cfg, 'filename', None) or 'config.py'
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.load_from, cfg.resume, cfg.randomness = checkpoint, False, dict(seed=seed)
    name = f'sfsi_{tag}_{uuid.uuid4().hex[:6]}'
    cfg.experiment_name = name
    if cfg.get('visualizer') is not None:
        cfg.visualizer.name = name
    if str(cfg.model.get('type', '')).startswith('Dyn'):
        cfg.test_evaluator = _with_sparsity_metric(cfg.test_evaluator)
    runner = build_runner(cfg, config_path, work_dir=os.path.join(str(work_dir), tag))
    if prepare_model is not None:
        class _Prepare(Hook):
            priority = 'LOWEST'

            def before_test(self, runner):  # after load_or_resume
                prepare_model(runner.model)
        runner.register_hook(_Prepare())
    try:
        metrics = runner.test()
    finally:
        _close_log_files(runner)
    return {k: float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v
            for k, v in metrics.items()}


def _mean_std(values):
    return dict(mean=statistics.fmean(values),
                std=statistics.pstdev(values) if len(values) > 1 else 0.0)


def stability_study(config, checkpoint, seeds, grid_priors, work_dir) -> dict:
    """Appendix Table 3: evaluate once per sampling seed for every grid-prior setting
    (an int step or None), report each run and the mean / std of the task metric and of
    the executed backbone GFLOPs per setting."""
    runs, summary = [], []
    for prior in grid_priors:
        rows = []
        for seed in seeds:
            metrics = evaluate(config, checkpoint, work_dir, f'grid{prior}_seed{seed}',
                               {'model.backbone.sampling_seed': int(seed),
                                'model.backbone.grid_prior_interval': prior})
            name, value = _task_metric(metrics)
            rows.append(dict(grid_prior=prior, seed=int(seed), metric=name, value=value,
                             gflops=_metric(metrics, 'backbone_gflops_executed', 'GFLOPs'),
                             activation_rate=_metric(metrics, 'activation_rate', 'rate')))
        runs += rows
        summary.append(dict(grid_prior=prior, metric=rows[0]['metric'], runs=len(rows),
                            value=_mean_std([r['value'] for r in rows]),
                            gflops=_mean_std([r['gflops'] for r in rows])))
    return dict(runs=runs, summary=summary)


def prunable_weights(backbone: nn.Module):
    """(module, 'weight') of every conv of the backbone except SFSI's mask heads (not
    convs) and the DCN offset convs (``conv_offset``)."""
    return [(module, 'weight') for name, module in backbone.named_modules()
            if isinstance(module, nn.Conv2d) and not name.endswith('conv_offset')]


def prune_backbone_(backbone: nn.Module, ratio: float) -> dict:
    """``torch.nn.utils.prune.global_unstructured`` (L1) of ``ratio`` of the backbone's
    prunable conv weights, made permanent; returns total / non-zero parameters."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f'pruning ratio must be in [0, 1), got {ratio}')
    targets = prunable_weights(backbone)
    if ratio > 0:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured,
                                  amount=ratio)
        for module, name in targets:
            prune.remove(module, name)
    params = list(backbone.parameters())
    return dict(params=sum(p.numel() for p in params),
                nonzero_params=sum(int((p != 0).sum()) for p in params))


def pruning_study(models, ratios, work_dir) -> list:
    """Appendix Table 4: for every ``(label, config, checkpoint)`` in ``models`` and
    every ratio, prune the backbone, evaluate, and report backbone parameters
    (non-zero), executed backbone GFLOPs (dynamic models; mask-based, dense convs
    counted in full) and the task metric."""
    rows = []
    for label, config, checkpoint in models:
        for ratio in ratios:
            counts = {}

            def prepare(model, ratio=ratio, counts=counts):
                model = getattr(model, 'module', model)
                counts.update(prune_backbone_(model.backbone, ratio))
            metrics = evaluate(config, checkpoint, work_dir, f'{label}_prune{ratio:g}',
                               prepare_model=prepare)
            name, value = _task_metric(metrics)
            gflops = [v for k, v in metrics.items() if k.endswith('backbone_gflops_executed')]
            rows.append(dict(model=label, ratio=float(ratio), metric=name, value=value,
                             backbone_params_m=counts['params'] / 1e6,
                             backbone_nonzero_params_m=counts['nonzero_params'] / 1e6,
                             backbone_gflops=gflops[0] if gflops else None))
    return rows


def format_rows(rows, columns) -> str:
    """A plain-text table of ``rows`` (dicts) with ``columns`` [(key, header)]."""
    def cell(value):
        if isinstance(value, float):
            return f'{value:.4g}'
        if isinstance(value, dict) and 'mean' in value:
            return f"{value['mean']:.4g} +- {value['std']:.2g}"
        return str(value)
    table = [[header for _, header in columns]] + \
        [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return '\n'.join('  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in table)
