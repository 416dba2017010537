"""Predicted against measured latency of real mmdyn LAS bottlenecks (accuracy study).

One block per stage of a LAS-ResNet (by default the second block of each stage of
LAS-ResNet-101: stride 1, no projection, the block most stages are made of) is timed
on this machine on its sparse path (``prepare_for_timing``: eval, BatchNorm folded,
channels-last; the dense-route fallback switched off with ``MMDYN_DENSE_FALLBACK=never``
so that every rate runs the sparse executor) with masks forced to exactly
``round(r * patches)`` active patches, alternating with the same block of the static
twin (``static_twin()``, BatchNorm folded). The predictor is then evaluated at the
measured patch count. Reported: mean absolute relative error of the dynamic latency
and of the latency ratio r_l, per stage and overall, the worst stage, Spearman's rank
correlation, and how often the fastest S of a stage at a rate is the predicted one.

torch and mmdyn's models are imported inside the functions (``import mmdyn.latency``
stays numpy-only).
"""
import math
import statistics
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .hardware import Hardware
from .machine import environment_variable
from .network import EXPANSION, STEM_CHANNELS
from .predictor import dynamic_block_latency, num_patches, static_block_latency
from .search import BackboneLayout, check_rate

DEFAULT_SIZES = (1, 2, 4, 7, 8)
DEFAULT_RATES = tuple(round(0.1 * k, 1) for k in range(1, 11))
FALLBACK_ENV = 'MMDYN_DENSE_FALLBACK'


def stage_blocks(depth: int, input_hw: Tuple[int, int], block_index: int = 1,
                 base_channels: int = STEM_CHANNELS):
    """``[(stage, in_channels, mid, out_channels, h, w)]`` of block ``block_index`` of
    every stage (index >= 1: stride 1, no projection) of mmdet's layout (``mid`` =
    ``base_channels * 2**stage``)."""
    if block_index < 1:
        raise ValueError('block_index must be >= 1 (a stride-1 block without projection)')
    layout = BackboneLayout(depth, tuple(input_hw))
    out = []
    for stage, (h, w) in enumerate(layout.stage_maps()):
        if block_index >= layout.stage_blocks[stage]:
            raise ValueError(f'stage {stage + 1} has only {layout.stage_blocks[stage]} blocks')
        mid = base_channels * 2 ** stage
        out.append((stage, mid * EXPANSION, mid, mid * EXPANSION, h, w))
    return out


def route_policy(policy: str):
    """``MMDYN_DENSE_FALLBACK=policy`` for the duration (restored afterwards):
    ``'never'`` times the sparse executor, ``'always'`` the dense route."""
    return environment_variable(FALLBACK_ENV, policy)


def _check_inputs(sizes, rates, threads, repeats, warmup):
    sizes = tuple(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                        for s in sizes):
        raise ValueError(f'sizes must be positive ints, got {sizes!r}')
    rates = tuple(check_rate(r) for r in rates)
    if not rates:
        raise ValueError('give at least one rate')
    for name, value, low in (('repeats', repeats, 1), ('warmup', warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f'threads must be a positive int, got {threads!r}')
    return sizes, rates


def _time_pair(static: Callable, dynamic: Callable, x, warmup: int, repeats: int):
    """Median seconds of ``static(x)`` and ``dynamic(fresh copy of x)``, alternating.
    The copy (untimed) lets the dynamic block update its input in place, as it does
    inside the backbone."""
    import torch
    times = ([], [])
    for step in range(warmup + repeats):
        start = time.perf_counter()
        static(x)
        t_static = time.perf_counter() - start
        fresh = x.clone(memory_format=torch.channels_last)
        start = time.perf_counter()
        dynamic(fresh)
        t_dynamic = time.perf_counter() - start
        if step >= warmup:
            times[0].append(t_static)
            times[1].append(t_dynamic)
    return statistics.median(times[0]), statistics.median(times[1])


def measure_las_blocks(sizes: Sequence[int] = DEFAULT_SIZES,
                       rates: Sequence[float] = DEFAULT_RATES,
                       input_hw: Tuple[int, int] = (800, 1216), depth: int = 101,
                       threads: Optional[int] = None, repeats: int = 7, warmup: int = 2,
                       stages: Iterable[int] = (0, 1, 2, 3), block_index: int = 1,
                       seed: int = 0, progress: Optional[Callable[[str], None]] = None,
                       base_channels: int = STEM_CHANNELS, passes: int = 1) -> List[dict]:
    """Time block ``block_index`` of each stage of a LAS-ResNet-``depth`` (random
    weights; BatchNorm folded) for every S in ``sizes`` that fits the stage's map
    (S <= min(h, w)) and every rate (``base_channels``: the width of mmdet's ResNet,
    64 for the standard network; the calibration times other widths). Returns one
    dict per point: stage (0-based), S, rate (requested), patches, cells, the block
    shape, measured ``dynamic`` and ``static`` seconds (medians of ``repeats`` after
    ``warmup``).

    ``passes`` > 1 measures the whole grid that many times, one pass after the other
    (minutes apart at full size): each point then also lists ``dynamic_passes`` and
    ``static_passes`` (one median per pass), and ``dynamic`` / ``static`` are the
    medians of those. How often two passes pick the same fastest S is the
    reproducibility of the measurement itself (:func:`summarize`)."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f'passes must be an int >= 1, got {passes!r}')
    runs = [_measure_pass(sizes, rates, input_hw, depth, threads, repeats, warmup, stages,
                          block_index, seed, progress if passes == 1 else _label(progress, k),
                          base_channels) for k in range(passes)]
    if passes == 1:
        return runs[0]
    points = []
    for same in zip(*runs):
        dynamic = [p['dynamic'] for p in same]
        static = [p['static'] for p in same]
        points.append(dict(same[0], dynamic=statistics.median(dynamic),
                           static=statistics.median(static), dynamic_passes=dynamic,
                           static_passes=static))
    return points


def _label(progress, k: int):
    return (lambda text: progress(f'pass {k + 1}: {text}')) if progress else None


def _measure_pass(sizes, rates, input_hw, depth, threads, repeats, warmup, stages,
                  block_index, seed, progress, base_channels) -> List[dict]:
    """One pass of :func:`measure_las_blocks`."""
    import torch
    from mmdyn.models.backbones import LASResNet
    sizes, rates = _check_inputs(sizes, rates, threads, repeats, warmup)
    shapes = [s for s in stage_blocks(depth, input_hw, block_index, base_channels)
              if s[0] in set(stages)]
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    inputs = {s[0]: torch.rand(1, s[1], s[4], s[5], generator=gen)
              .contiguous(memory_format=torch.channels_last) for s in shapes}
    points = []
    try:
        with route_policy('never'), torch.no_grad():
            for S in sizes:
                fitting = [s for s in shapes if S <= min(s[4], s[5])]
                if not fitting:
                    continue
                backbone = LASResNet(depth, granularity=(S, ) * 4, base_channels=base_channels,
                                     init_cfg=None)
                twin = backbone.static_twin()  # before folding: it copies the weights
                backbone.prepare_for_timing()
                for stage, cin, mid, cout, h, w in fitting:
                    block = getattr(backbone, f'layer{stage + 1}')[block_index]
                    static = getattr(twin, f'layer{stage + 1}')[block_index]
                    for rate in rates:
                        block.forced_rate, block.forced_seed = rate, seed
                        t_static, t_dynamic = _time_pair(static, block, inputs[stage],
                                                         warmup, repeats)
                        if block.ran_densely:  # cannot happen with the fallback off
                            raise RuntimeError(f'stage {stage + 1} S={S} r={rate}: the '
                                               'block took the dense route')
                        mask = block.record.mask
                        point = dict(stage=stage, S=S, rate=rate,
                                     patches=int(mask.sum()), cells=int(mask.numel()),
                                     in_channels=cin, mid_channels=mid, out_channels=cout,
                                     h=h, w=w, dynamic=t_dynamic, static=t_static)
                        points.append(point)
                        if progress:
                            progress(f'stage {stage + 1} S={S} r={rate:g}: dynamic '
                                     f'{t_dynamic * 1e3:.3f} ms, static {t_static * 1e3:.3f} '
                                     f'ms, measured ratio {t_dynamic / t_static:.3f}')
                del backbone, twin
    finally:
        torch.set_num_threads(previous)
    return points


def rate_for_patches(patches: int, h: int, w: int, size: int) -> float:
    """A rate r with ``num_patches(r, h, w, size) == patches`` (guards float rounding)."""
    cells = math.ceil(h / size) * math.ceil(w / size)
    rate = patches / cells
    while num_patches(rate, h, w, size) > patches:
        rate = math.nextafter(rate, 0.0)
    return rate


def predict_points(hw: Hardware, points: Sequence[dict]) -> List[dict]:
    """``points`` with the predicted ``predicted_dynamic`` / ``predicted_static`` (s)
    and both latency ratios added, at each point's measured patch count."""
    out = []
    for p in points:
        args = (hw, p['in_channels'], p['mid_channels'], p['out_channels'], p['h'], p['w'])
        rate = rate_for_patches(p['patches'], p['h'], p['w'], p['S'])
        dyn = dynamic_block_latency(*args, p['S'], rate, 1, downsample=False).total
        stat = static_block_latency(*args, 1, downsample=False).total
        out.append(dict(p, predicted_dynamic=dyn, predicted_static=stat,
                        ratio=p['dynamic'] / p['static'], predicted_ratio=dyn / stat))
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size != b.size:
        raise ValueError('spearman: sequences of different lengths')
    if a.size < 2:
        return float('nan')
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float('nan')
    return float(np.clip(np.corrcoef(ra, rb)[0, 1], -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind='mergesort')
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    for value in np.unique(x):  # average the ranks of ties
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _mare(rows, key, ref) -> float:
    return float(np.mean([abs(r[key] - r[ref]) / r[ref] for r in rows])) if rows \
        else float('nan')


def _fastest(group: Sequence[dict], key: str) -> int:
    return min(group, key=lambda r: (r[key], r['S']))['S']


def _pass_winners(latency: Dict[int, Sequence[float]]) -> List[int]:
    """``{S: one latency per pass}`` -> the S that was fastest in at least one pass
    (sorted; one S when every pass agrees)."""
    passes = len(next(iter(latency.values())))
    return sorted({min(latency, key=lambda S: (latency[S][k], S)) for k in range(passes)})


def _with_passes(check: dict, winners: Optional[List[int]]) -> dict:
    """Adds, when the points were measured in several passes, which S won a pass
    (``pass_winners``), whether every pass agreed (``reproducible``) and whether the
    predicted S won at least one pass (``predicted_won_a_pass``)."""
    if winners is not None:
        check.update(pass_winners=winners, reproducible=len(winners) == 1,
                     predicted_won_a_pass=check['predicted_S'] in winners)
    return check


def _has_passes(rows) -> bool:
    return all(len(r.get('dynamic_passes', ())) > 1 for r in rows)


def _fastest_agreement(rows) -> Tuple[float, List[dict]]:
    """Over the (rate) groups with at least two S: the fraction where the measured
    fastest S is the predicted fastest, and the groups; each group also gives the
    ``regret``, measured latency at the predicted S over the measured best, minus 1
    (and, for points measured in several passes, see :func:`_with_passes`)."""
    groups: Dict[float, List[dict]] = {}
    for r in rows:
        groups.setdefault(r['rate'], []).append(r)
    checks = []
    for rate, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        measured, predicted = _fastest(group, 'dynamic'), _fastest(group, 'predicted_dynamic')
        by_size = {r['S']: r['dynamic'] for r in group}
        winners = _pass_winners({r['S']: r['dynamic_passes'] for r in group}) \
            if _has_passes(group) else None
        checks.append(_with_passes(dict(rate=rate, measured_S=measured, predicted_S=predicted,
                                        regret=by_size[predicted] / by_size[measured] - 1),
                                   winners))
    agree = [c['measured_S'] == c['predicted_S'] for c in checks]
    return (float(np.mean(agree)) if agree else float('nan')), checks


def _stage_choice(rows) -> Optional[dict]:
    """The S of a stage with the smallest latency summed over the rates, measured and
    predicted (only S measured at every rate), and the predicted S's regret (and, for
    points measured in several passes, each pass's own sums: :func:`_with_passes`)."""
    rates = {r['rate'] for r in rows}
    by_size: Dict[int, List[dict]] = {}
    for r in rows:
        by_size.setdefault(r['S'], []).append(r)
    full = {S: group for S, group in by_size.items() if len(group) == len(rates)}
    if len(full) < 2:
        return None
    measured_sum = {S: sum(r['dynamic'] for r in g) for S, g in full.items()}
    predicted_sum = {S: sum(r['predicted_dynamic'] for r in g) for S, g in full.items()}
    measured = min(full, key=lambda S: (measured_sum[S], S))
    predicted = min(full, key=lambda S: (predicted_sum[S], S))
    winners = None
    if _has_passes(rows):
        winners = _pass_winners({S: np.sum([r['dynamic_passes'] for r in g], axis=0)
                                 for S, g in full.items()})
    return _with_passes(dict(
        measured_S=measured, predicted_S=predicted,
        regret=measured_sum[predicted] / measured_sum[measured] - 1,
        measured_ms={S: measured_sum[S] / len(rates) * 1e3 for S in sorted(full)},
        predicted_ms={S: predicted_sum[S] / len(rates) * 1e3 for S in sorted(full)}), winners)


def _fraction(checks, key) -> float:
    values = [c[key] for c in checks if key in c]
    return float(np.mean(values)) if values else float('nan')


def summarize(rows: Sequence[dict]) -> dict:
    """Accuracy statistics of predicted points (see :func:`predict_points`)."""
    per_stage = {}
    for stage in sorted({r['stage'] for r in rows}):
        mine = [r for r in rows if r['stage'] == stage]
        agreement, checks = _fastest_agreement(mine)
        per_stage[stage + 1] = dict(
            points=len(mine), mean_abs_rel_error=_mare(mine, 'predicted_dynamic', 'dynamic'),
            mean_abs_rel_error_ratio=_mare(mine, 'predicted_ratio', 'ratio'),
            static_abs_rel_error=_mare(mine, 'predicted_static', 'static'),
            spearman=spearman([r['predicted_dynamic'] for r in mine],
                              [r['dynamic'] for r in mine]),
            spearman_ratio=spearman([r['predicted_ratio'] for r in mine],
                                    [r['ratio'] for r in mine]),
            fastest_s_agreement=agreement, fastest_s=checks,
            stage_choice=_stage_choice(mine))
    checks = [c for s in per_stage.values() for c in s['fastest_s']]
    agreements = [c['measured_S'] == c['predicted_S'] for c in checks]
    regrets = [c['regret'] for c in checks]
    choices = [s['stage_choice'] for s in per_stage.values() if s['stage_choice']]
    errors = {s: v['mean_abs_rel_error'] for s, v in per_stage.items()}
    return dict(
        points=len(rows),
        mean_abs_rel_error=_mare(rows, 'predicted_dynamic', 'dynamic'),
        mean_abs_rel_error_ratio=_mare(rows, 'predicted_ratio', 'ratio'),
        worst_stage=max(errors, key=lambda s: errors[s]) if errors else None,
        spearman=spearman([r['predicted_dynamic'] for r in rows], [r['dynamic'] for r in rows]),
        spearman_ratio=spearman([r['predicted_ratio'] for r in rows],
                                [r['ratio'] for r in rows]),
        fastest_s_agreement=float(np.mean(agreements)) if agreements else float('nan'),
        fastest_s_regret_mean=float(np.mean(regrets)) if regrets else float('nan'),
        fastest_s_regret_max=float(np.max(regrets)) if regrets else float('nan'),
        stage_choice_agreement=float(np.mean([c['measured_S'] == c['predicted_S']
                                              for c in choices])) if choices else float('nan'),
        # with several passes: the measurement's own reproducibility, and how often the
        # predicted S won at least one pass (nan for a single pass)
        fastest_s_reproducible=_fraction(checks, 'reproducible'),
        fastest_s_won_a_pass=_fraction(checks, 'predicted_won_a_pass'),
        stage_choice_reproducible=_fraction(choices, 'reproducible'),
        stage_choice_won_a_pass=_fraction(choices, 'predicted_won_a_pass'),
        per_stage=per_stage)


def accuracy_study(hw: Hardware, sizes: Sequence[int] = DEFAULT_SIZES,
                   rates: Sequence[float] = DEFAULT_RATES,
                   input_hw: Tuple[int, int] = (800, 1216), depth: int = 101,
                   threads: Optional[int] = None, repeats: int = 7, warmup: int = 2,
                   block_index: int = 1, seed: int = 0,
                   progress: Optional[Callable[[str], None]] = None, passes: int = 1) -> dict:
    """Measure (:func:`measure_las_blocks`), predict on ``hw`` and summarise
    (:func:`summarize`). Returns the summary with ``settings``, ``hardware`` and every
    ``point``. Full size (LAS-ResNet-101 at 800 x 1216, 5 S x 10 rates x 4 stages)
    takes minutes; tests use tiny inputs. ``passes``: see :func:`measure_las_blocks`."""
    import torch
    start = time.perf_counter()
    points = measure_las_blocks(sizes, rates, input_hw, depth, threads, repeats, warmup,
                                block_index=block_index, seed=seed, progress=progress,
                                passes=passes)
    rows = predict_points(hw, points)
    result = summarize(rows)
    result.update(hardware=hw.name, points_detail=rows, seconds=time.perf_counter() - start,
                  settings=dict(sizes=list(sizes), rates=list(rates), input=list(input_hw),
                                depth=depth, block_index=block_index, repeats=repeats,
                                warmup=warmup, seed=seed, passes=passes,
                                threads=threads or torch.get_num_threads(),
                                torch=torch.__version__))
    return result


def format_summary(result: dict) -> str:
    lines = [f'{result["points"]} points, profile {result["hardware"]}: mean |rel. error| '
             f'latency {result["mean_abs_rel_error"]:.3f}, ratio '
             f'{result["mean_abs_rel_error_ratio"]:.3f}; Spearman {result["spearman"]:.3f} '
             f'(ratio {result["spearman_ratio"]:.3f}); fastest S agreement '
             f'{result["fastest_s_agreement"]:.2f} of (stage, rate) pairs (the predicted S '
             f'measured {result["fastest_s_regret_mean"]:.1%} slower than the best on '
             f'average, at most {result["fastest_s_regret_max"]:.1%}); fastest S per stage '
             f'over all rates agreeing in {result["stage_choice_agreement"]:.2f} of the '
             f'stages; worst stage {result["worst_stage"]}']
    if not math.isnan(result['fastest_s_reproducible']):
        lines.append(f'  passes: the measured fastest S is the same in every pass for '
                     f'{result["fastest_s_reproducible"]:.2f} of the (stage, rate) pairs and '
                     f'{result["stage_choice_reproducible"]:.2f} of the stages; the predicted '
                     f'S won at least one pass in {result["fastest_s_won_a_pass"]:.2f} of the '
                     f'pairs and {result["stage_choice_won_a_pass"]:.2f} of the stages')
    for stage, s in result['per_stage'].items():
        lines.append(f'  stage {stage}: {s["points"]:3d} points, error '
                     f'{s["mean_abs_rel_error"]:.3f} (ratio '
                     f'{s["mean_abs_rel_error_ratio"]:.3f}), static error '
                     f'{s["static_abs_rel_error"]:.3f}, Spearman {s["spearman"]:.3f}, '
                     f'fastest S agreement {s["fastest_s_agreement"]:.2f}')
        choice = s['stage_choice']
        if choice:
            lines.append(f'           fastest S over all rates: measured {choice["measured_S"]}'
                         f', predicted {choice["predicted_S"]} (measured '
                         f'{choice["regret"]:.1%} slower than the best); mean ms per S '
                         'measured / predicted: ' + ', '.join(
                             f'{S}: {m:.2f} / {choice["predicted_ms"][S]:.2f}'
                             for S, m in choice['measured_ms'].items()))
            if 'pass_winners' in choice:
                lines.append(f'           fastest S in some pass: {choice["pass_winners"]}')
    return '\n'.join(lines)
