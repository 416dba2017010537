"""A CPU :class:`Hardware` profile calibrated on the running machine.

LASNet's predictor (Sec. 3.3, Appendix A) needs a handful of device parameters; the
paper's are GPU data-sheet values. For a CPU they are measured here, by micro-benchmarks
of generic operators (never the LAS blocks the predictor is later asked about):

- ``launch_time``: framework dispatch, the median cost of a one-element add and of a
  tiny conv;
- ``num_pes``: the effective processing engines, the measured speedup of a large GEMM
  (``mm``) at the current thread count over one thread (rounded, at most the thread
  count: a measured, not a nominal, core count);
- ``fp32_units`` (x ``frequency`` x ``num_pes``): the MAC rate R that makes the
  predictor's own static-conv model reproduce measured convs (1x1 and 3x3,
  channels-last, batch 1; least squares on log latency). ``frequency`` is the reported
  clock (``/sys`` cpufreq, else ``/proc/cpuinfo``), so ``fp32_units`` is an effective
  MACs per cycle and PE;
- ``dram_bandwidth``: a large copy (read + write bytes over time);
- ``l2_ratio``: the bandwidth of copies that fit in half the L2 cache (size from
  ``/sys/devices/system/cpu/cpu0/cache``; the slope between two sizes, so that the
  dispatch cost cancels) over ``dram_bandwidth``, at least 1;
- ``access_quantum`` q: gathers of runs of n contiguous fp32 (n = S or S + 2, an
  S x S patch row without / with its halo, and longer runs) out of a cache-resident
  buffer; q is the power of two whose efficiency e(n) = n / q (n <= q) best fits the
  measured throughput relative to long runs;
- ``latency_mode``: R is fitted for both ``'max'`` (full overlap of memory traffic and
  compute) and ``'add'`` (Appendix A's sum); ``'auto'`` (default) keeps the mode whose
  fit over the calibration ops (the convs and a residual-sized add) is better.
  One rate cannot fit every conv (3x3 convs run at a higher MAC rate than 1x1 convs
  in PyTorch on a CPU); the residuals are saved with the profile.

``fp32_cycles`` (4) and ``batch_size`` (1) keep the simulator's values. The profile's
``engine`` (:mod:`.engine`, :mod:`.sar`) is fitted to LAS and SAR blocks of other widths
and map sizes than the ones predicted later, their convs and generic GEMMs
(:func:`measure_engine`); its ``kernels`` are the kernel choices this machine measured
(:func:`measured_kernel_choices`). A ``MMDYN_LATENCY_PROFILE`` set in the environment is
ignored while measuring. torch is imported inside the functions only, so
``import mmdyn.latency`` stays numpy-only.
See docs/latency_predictor.md, "Calibrating a CPU profile".
"""
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import machine
from .machine import ENV_PROFILE
from .engine import UNITS, calibration_samples, fit_engine
from .hardware import Hardware, hardware_to_dict, save_profile, write_atomically
from .predictor import access_efficiency, clear_caches, elementwise_add, static_conv

QUANTUM_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128)
MODES = ('max', 'add', 'auto')
FALLBACK_FREQUENCY = 1e9  # Hz, when neither cpufreq nor /proc/cpuinfo gives a clock


@dataclass(frozen=True)
class ConvSpec:
    """A calibration conv: ``cin -> cout``, ``k x k`` ('same' padding), ``hw x hw``."""
    cin: int
    cout: int
    k: int
    hw: int

    @property
    def macs(self) -> int:
        return self.cin * self.cout * self.k * self.k * self.hw * self.hw

    @property
    def label(self) -> str:
        return f'conv{self.k}x{self.k}_{self.cin}-{self.cout}_{self.hw}'


@dataclass(frozen=True)
class BlockSet:
    """Calibration LAS bottlenecks: block 1 of ``stages`` of a LAS-ResNet-``depth`` of
    width ``base_channels`` at ``input_hw`` (shapes unlike the standard ResNet's)."""
    depth: int
    base_channels: int
    input_hw: Tuple[int, int]
    stages: Tuple[int, ...]


@dataclass(frozen=True)
class SARSet:
    """Calibration SAR refinement bottlenecks: the last refinement block of every SAR
    stage of a SAR-ResNet-``depth`` of width ``base_channels`` at ``input_hw``."""
    depth: int
    base_channels: int
    input_hw: Tuple[int, int]
    setting: str
    mask_size: Tuple[int, int, int]


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one calibration (``FULL`` or ``QUICK``)."""
    repeats: int  # samples per measurement (the median is kept)
    dispatch_calls: int  # calls per dispatch sample
    gemm_n: int
    convs: Tuple[ConvSpec, ...]
    add_shape: Tuple[int, int, int]
    dram_bytes: int
    cache_calls: int  # copies per cache-bandwidth sample
    gather_elements: int  # fp32 gathered per gather sample
    gather_runs: Tuple[int, ...]  # run lengths n
    gather_reference: int  # long run defining e = 1
    # the engine model (mmdyn.latency.engine): LAS blocks of other widths, their convs
    # and generic GEMMs (rows, k, n)
    block_sets: Tuple[BlockSet, ...]
    block_sizes: Tuple[int, ...]
    block_rates: Tuple[float, ...]
    block_repeats: int
    gemm_shapes: Tuple[Tuple[int, int, int], ...]
    # SAR refinement blocks (mmdyn.latency.sar), both routes, at these rates
    sar_sets: Tuple[SARSet, ...] = ()
    sar_rates: Tuple[float, ...] = ()


FULL = Plan(repeats=15, dispatch_calls=200, gemm_n=1024,
            convs=(ConvSpec(256, 64, 1, 56), ConvSpec(64, 64, 3, 56),
                   ConvSpec(64, 256, 1, 56), ConvSpec(128, 128, 3, 28),
                   ConvSpec(256, 256, 3, 14), ConvSpec(1024, 256, 1, 14),
                   ConvSpec(16, 256, 1, 112)),
            add_shape=(256, 112, 112), dram_bytes=256 * 2 ** 20, cache_calls=40,
            gather_elements=2 ** 15, gather_runs=(1, 2, 3, 4, 6, 7, 8, 9, 10, 16, 32, 64),
            gather_reference=512,
            block_sets=(BlockSet(50, 48, (704, 1056), (0, 1, 2, 3)),
                        BlockSet(50, 96, (480, 736), (0, 1, 2))),
            block_sizes=(1, 2, 3, 4, 5, 6, 7, 8), block_rates=(0.1, 0.4, 0.7, 1.0),
            block_repeats=5,
            gemm_shapes=((46464, 192, 49), (11616, 384, 97), (2904, 768, 193),
                         (726, 1536, 385), (20000, 48, 192), (5000, 96, 384),
                         (1200, 192, 768), (300, 384, 1536), (40000, 432, 48),
                         (3000, 1728, 192)),
            sar_sets=(SARSet(50, 48, (704, 1056), 'G2s2a2b1', (7, 7, 2)),
                      SARSet(50, 96, (480, 736), 'G4s2a2b1', (5, 5, 3))),
            sar_rates=(0.1, 0.4, 0.7, 1.0))
QUICK = Plan(repeats=3, dispatch_calls=20, gemm_n=128,
             convs=(ConvSpec(32, 16, 1, 14), ConvSpec(16, 16, 3, 14),
                    ConvSpec(8, 32, 1, 28)),
             add_shape=(32, 28, 28), dram_bytes=8 * 2 ** 20, cache_calls=4,
             gather_elements=2 ** 12, gather_runs=(1, 3, 8, 16), gather_reference=128,
             block_sets=(BlockSet(50, 8, (64, 96), (0, 1)), ), block_sizes=(1, 2, 4),
             block_rates=(0.5, 1.0), block_repeats=1,
             gemm_shapes=((256, 16, 8), (64, 32, 64)),
             sar_sets=(SARSet(50, 8, (64, 96), 'G2s2a2b1', (2, 2, 2)), ),
             sar_rates=(0.5, 1.0))


@dataclass
class Calibration:
    """A calibrated profile, what it was fitted to, and how long that took."""
    hardware: Hardware
    measurements: dict
    fit: dict
    seconds: float
    quick: bool

    def as_dict(self) -> dict:
        return dict(hardware=hardware_to_dict(self.hardware), cpu=machine.describe(),
                    quick=self.quick, seconds=self.seconds, measurements=self.measurements,
                    fit=self.fit)

    def summary(self) -> str:
        hw, m = self.hardware, self.measurements
        lines = [f'{hw.name}: {machine.describe()}, {m["threads"]} thread(s), '
                 f'{"quick" if self.quick else "full"} calibration in {self.seconds:.1f} s',
                 f'  dispatch (launch_time)  {hw.launch_time * 1e6:8.2f} us',
                 f'  GEMM {m["gemm"]["n"]}^3            {m["gemm"]["rate"] / 1e9:8.2f} GMAC/s '
                 f'(1 thread {m["gemm"]["rate_1"] / 1e9:.2f}; speedup '
                 f'{m["gemm"]["speedup"]:.2f} -> num_pes {hw.num_pes})',
                 f'  fitted conv rate R      {hw.peak_macs / 1e9:8.2f} GMAC/s (fp32_units '
                 f'{hw.fp32_units:.2f} at {hw.frequency / 1e9:.3f} GHz)',
                 f'  DRAM bandwidth          {hw.dram_bandwidth / 1e9:8.2f} GB/s',
                 f'  L2 bandwidth            {m["l2"]["bandwidth"] / 1e9:8.2f} GB/s '
                 f'(l2_ratio {hw.l2_ratio:.2f})',
                 f'  access quantum q        {hw.access_quantum:8d} fp32',
                 f'  latency mode            {hw.latency_mode:>8} (rms log error max '
                 f'{self.fit["rms_log_error"]["max"]:.3f}, add '
                 f'{self.fit["rms_log_error"]["add"]:.3f})']
        for label, row in self.fit['ops'].items():
            lines.append(f'    {label:<22} measured {row["measured"] * 1e6:10.1f} us, '
                         f'predicted {row["predicted"] * 1e6:10.1f} us')
        engine = self.fit['engine']
        lines.append(f'  engine model (mmdyn LAS executor): rms relative error '
                     f'{engine["rms_rel_error"]:.3f}, max {engine["max_rel_error"]:.3f} '
                     f'({engine["dropped"]} disturbed samples dropped)')
        for name, value in engine['coefficients'].items():
            rate = f'  ({1 / value / 1e9:.1f} G/s)' if value > 0 and (
                '_mac' in name or name.endswith('_byte')) else ''
            lines.append(f'    {name:<16} {value:10.3e} {UNITS[name]}{rate}')
        lines += [f'  WARNING: {w}' for w in self.fit['warnings']]
        return '\n'.join(lines)


# ---------------------------------------------------------------- timing helpers

def _median_seconds(fn: Callable[[], object], repeats: int, calls: int = 1) -> float:
    """Median over ``repeats`` samples of the mean seconds of ``calls`` calls."""
    return _interleaved({None: fn}, repeats, calls)[None]


def _interleaved(fns: Dict[object, Callable[[], object]], repeats: int,
                 calls: int = 1) -> Dict[object, float]:
    """Median seconds per call of several functions, sampled in turns (a load change
    hits all of them alike)."""
    samples = {key: [] for key in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[key].append((time.perf_counter() - start) / calls)
    return {key: statistics.median(s) for key, s in samples.items()}


# ---------------------------------------------------------------- measurements

def measure_dispatch(plan: Plan) -> dict:
    import torch
    import torch.nn.functional as F
    a, b = torch.ones(1), torch.ones(1)
    x = torch.rand(1, 4, 4, 4)
    w = torch.rand(4, 4, 1, 1)
    times = _interleaved({'add': lambda: torch.add(a, b), 'conv': lambda: F.conv2d(x, w)},
                         plan.repeats, plan.dispatch_calls)
    return dict(add=times['add'], conv=times['conv'],
                launch_time=statistics.median(times.values()))


def measure_gemm(plan: Plan, threads: int) -> dict:
    import torch
    n = plan.gemm_n
    a, b = torch.rand(n, n), torch.rand(n, n)
    out = torch.empty(n, n)
    run = lambda: torch.mm(a, b, out=out)  # noqa: E731
    rate = n ** 3 / _median_seconds(run, plan.repeats)
    if threads > 1:
        torch.set_num_threads(1)
        try:
            rate_1 = n ** 3 / _median_seconds(run, plan.repeats)
        finally:
            torch.set_num_threads(threads)
    else:
        rate_1 = rate
    return dict(n=n, rate=rate, rate_1=rate_1, speedup=rate / rate_1)


def _conv_call(cin: int, cout: int, k: int, h: int, w: int, bias: bool = False):
    """A zero-argument call of a ``k x k`` 'same' conv on a channels-last ``cin x h x
    w`` map (batch 1, output allocated by the call as in inference)."""
    import torch
    import torch.nn.functional as F
    cl = torch.channels_last
    x = torch.rand(1, cin, h, w).contiguous(memory_format=cl)
    weight = torch.rand(cout, cin, k, k).contiguous(memory_format=cl)
    b = torch.rand(cout) if bias else None
    return lambda: F.conv2d(x, weight, b, padding=k // 2)


def measure_convs(plan: Plan) -> Dict[str, float]:
    """Seconds of each calibration conv (channels-last, batch 1, output allocated by
    the call as in inference) and of the residual-sized add."""
    import torch
    runs = {spec.label: _conv_call(spec.cin, spec.cout, spec.k, spec.hw, spec.hw)
            for spec in plan.convs}
    c, h, w_ = plan.add_shape
    a, b = torch.rand(1, c, h, w_), torch.rand(1, c, h, w_)
    runs[f'add_{c}_{h}'] = lambda: torch.add(a, b)
    return _interleaved(runs, plan.repeats)


def measure_dram(plan: Plan) -> dict:
    import torch
    n = plan.dram_bytes // 4
    src, dst = torch.rand(n), torch.zeros(n)
    seconds = _median_seconds(lambda: dst.copy_(src), plan.repeats)
    return dict(bytes=plan.dram_bytes, seconds=seconds, bandwidth=2 * plan.dram_bytes / seconds)


def measure_cache_copy(plan: Plan, cache_bytes: int) -> dict:
    """Copy bandwidth of buffers of cache/8 and cache/2 bytes: the slope between the
    two sizes (the per-call cost cancels); the larger size alone if noise makes the
    slope non-positive."""
    import torch
    sizes = (cache_bytes // 8, cache_bytes // 2)
    buffers = {s: (torch.rand(s // 4), torch.zeros(s // 4)) for s in sizes}
    times = _interleaved({s: (lambda b=b: b[1].copy_(b[0])) for s, b in buffers.items()},
                         plan.repeats, plan.cache_calls)
    small, large = sizes
    slope = times[large] - times[small]
    bandwidth = 2 * (large - small) / slope if slope > 0 else 2 * large / times[large]
    return dict(cache_bytes=cache_bytes, sizes=list(sizes),
                seconds=[times[s] for s in sizes], bandwidth=bandwidth)


def measure_gather(plan: Plan, source_bytes: int) -> dict:
    """fp32 per second gathered in runs of n contiguous elements at random positions
    of a ``source_bytes`` buffer (an S x S patch reads S + 2 halo'd rows of S + 2;
    each row is one run), into a preallocated buffer; efficiency = rate(n) /
    rate(reference run)."""
    import torch
    numel = max(source_bytes // 4, 4 * plan.gather_reference)
    src = torch.rand(numel)
    gen = torch.Generator().manual_seed(0)
    runs, out = {}, torch.empty(plan.gather_elements + plan.gather_reference)
    for n in tuple(plan.gather_runs) + (plan.gather_reference, ):
        count = max(1, plan.gather_elements // n)
        rows = src.as_strided((numel - n + 1, n), (1, 1))  # every start position
        index = torch.randint(0, numel - n + 1, (count, ), generator=gen)
        dst = out[:count * n].view(count, n)
        runs[n] = (lambda rows=rows, index=index, dst=dst:
                   torch.index_select(rows, 0, index, out=dst))
    calls = max(1, plan.cache_calls // 4)
    times = _interleaved(runs, plan.repeats, calls)
    rate = {n: max(1, plan.gather_elements // n) * n / t for n, t in times.items()}
    ref = rate[plan.gather_reference]
    return dict(source_bytes=numel * 4, reference=plan.gather_reference,
                rate={str(n): r for n, r in rate.items()},
                efficiency={str(n): rate[n] / ref for n in plan.gather_runs})


def measure_engine(plan: Plan) -> dict:
    """What the engine model is fitted to (:func:`.engine.calibration_samples`): the
    calibration LAS blocks on their sparse path and their static twins
    (:func:`.accuracy.measure_las_blocks`), the twins' oneDNN convs one by one (so that
    1x1 and 3x3 rates separate), generic GEMMs and SAR refinement blocks on both routes
    (:func:`measure_sar_blocks`)."""
    import torch
    from mmdyn.ops.gemm import gemm
    from .accuracy import measure_las_blocks, stage_blocks
    blocks, convs, gemms = [], [], []
    for bs in plan.block_sets:
        blocks += measure_las_blocks(plan.block_sizes, plan.block_rates, bs.input_hw,
                                     bs.depth, repeats=plan.block_repeats, warmup=1,
                                     stages=bs.stages, base_channels=bs.base_channels)
        for stage, cin, mid, cout, h, w in stage_blocks(bs.depth, bs.input_hw, 1,
                                                        bs.base_channels):
            if stage not in bs.stages:
                continue
            shapes = ((cin, mid, 1), (mid, mid, 3), (mid, cout, 1))
            runs = {(ci, co, k): _conv_call(ci, co, k, h, w, bias=True) for ci, co, k in shapes}
            for (ci, co, k), t in _interleaved(runs, plan.repeats).items():
                convs.append(dict(cin=ci, cout=co, k=k, h=h, w=w, seconds=t))
    for rows, k, n in plan.gemm_shapes:
        a, b, bias = torch.rand(rows, k), torch.rand(k, n), torch.rand(n)
        gemms.append(dict(rows=rows, k=k, n=n, seconds=_median_seconds(
            lambda a=a, b=b, bias=bias: gemm(a, b, bias), plan.repeats)))
    return dict(blocks=blocks, convs=convs, gemms=gemms, sar_blocks=measure_sar_blocks(plan))


def _refinement_inputs(sar_set: SARSet):
    """A SAR-ResNet of ``sar_set`` prepared for timing, and ``(block, x, guide)`` of the
    last refinement block of every SAR stage, the inputs captured from one forward."""
    import torch
    from mmdyn.models.backbones import SARResNet
    net = SARResNet(sar_set.depth, sar_setting=sar_set.setting,
                    mask_size=sar_set.mask_size, base_channels=sar_set.base_channels,
                    min_input_size=min(sar_set.input_hw), init_cfg=None).prepare_for_timing()
    captured = []
    blocks = [getattr(net, f'layer{i + 1}').refine[-1] for i in range(3)]
    hooks = [b.register_forward_pre_hook(
        lambda block, args: captured.append((block, *(a.clone() for a in args))))
        for b in blocks]
    try:
        net(torch.rand(1, 3, *sar_set.input_hw).contiguous(memory_format=torch.channels_last))
    finally:
        for h in hooks:
            h.remove()
    return net, captured


def measure_sar_blocks(plan: Plan) -> list:
    """Seconds of SAR refinement bottlenecks (:class:`SARSet`; random weights, BatchNorm
    folded, channels-last) on the sparse route and on the dense route
    (``MMDYN_DENSE_FALLBACK=never`` / ``always``), masks forced to ``round(r * cells)``
    cells per group at every rate of ``plan.sar_rates``; a fresh copy of the input per
    call (the block may update it in place, as in the backbone)."""
    import torch
    from .accuracy import route_policy
    points = []
    for sar_set in plan.sar_sets:
        net, captured = _refinement_inputs(sar_set)
        for block, x, guide in captured:
            for rate in plan.sar_rates:
                block.forced_rate, block.forced_seed = rate, 0
                for route, policy in (('sparse', 'never'), ('dense', 'always')):
                    with route_policy(policy):
                        def call(block=block, x=x, guide=guide):
                            block(x.clone(memory_format=torch.channels_last), guide)
                        seconds = _median_seconds(call, plan.block_repeats)
                    mask = block.record.mask
                    if route == 'dense' and not mask.any():
                        continue  # no cell at this rate (a coarse grid): nothing to route
                    if block.ran_densely != (route == 'dense'):
                        raise RuntimeError(f'{block.block_name} r={rate}: did not take the '
                                           f'{route} route')
                    points.append(dict(
                        block=block.block_name, in_channels=block.in_channels,
                        mid_channels=block.mid_channels, out_channels=block.out_channels,
                        h=x.shape[2], w=x.shape[3], groups=block.groups,
                        mask_size=block.mask_size, rate=rate, route=route,
                        cells=[int(c) for c in mask[0].sum(dim=(1, 2))],
                        guide=list(guide.shape[1:]), downsample=block.downsample is not None,
                        seconds=seconds))
        del net, captured
    return points


def measured_kernel_choices() -> Dict[str, str]:
    """The CPU kernel choices this machine has measured at the current thread count
    (those of the calibration's blocks and GEMMs, and any made before): what a profile
    carries so that ``MMDYN_LATENCY_PROFILE`` needs to time no kernel."""
    from mmdyn.ops.kernel_choice import CHOOSER, stored_choices
    return {entry: impl for entry, impl in stored_choices().items()
            if entry.split(':', 2)[0] in CHOOSER.ops and entry.split(':', 2)[1] == 'cpu'}


# ---------------------------------------------------------------- fits

def fit_access_quantum(efficiency: Dict[int, float],
                       candidates: Sequence[int] = QUANTUM_CANDIDATES) -> Tuple[int, dict]:
    """The q among ``candidates`` whose model efficiency e(n, large gap, q) (Appendix A:
    n/q for a run shorter than q, ceil_eff(n, q) above) best fits the measured
    ``{n: efficiency}`` (least squares on the logs). Returns (q, {q: rms log error})."""
    runs = np.array(sorted(efficiency), dtype=np.float64)
    measured = np.log(np.maximum([efficiency[int(n)] for n in runs], 1e-12))
    errors = {}
    for q in candidates:
        model = access_efficiency(runs, np.full_like(runs, 1e9), q)
        errors[int(q)] = float(np.sqrt(np.mean((np.log(model) - measured) ** 2)))
    best = min(errors, key=lambda q: (errors[q], q))
    return best, errors


def predict_calibration_ops(hw: Hardware, plan: Plan) -> Dict[str, float]:
    """The predictor's latency of the calibration ops on ``hw`` (seconds)."""
    out = {spec.label: static_conv(hw, spec.cin, spec.cout, spec.hw, spec.hw, spec.k).total
           for spec in plan.convs}
    c, h, w = plan.add_shape
    out[f'add_{c}_{h}'] = elementwise_add(hw, c, h, w).total
    return out


def _rms_log_error(hw: Hardware, plan: Plan, measured: Dict[str, float]) -> float:
    predicted = predict_calibration_ops(hw, plan)
    return float(np.sqrt(np.mean([math.log(predicted[k] / measured[k]) ** 2
                                  for k in measured])))


def fit_rate(base: Hardware, plan: Plan, measured: Dict[str, float],
             initial: float) -> Tuple[float, float]:
    """The MAC rate R = num_pes * fp32_units * frequency minimising the rms log error
    of the predicted calibration ops (a log grid over initial/8 .. initial*8, refined
    by golden-section search around the best point). Returns (R, rms log error)."""
    def error(log_rate: float) -> float:
        units = math.exp(log_rate) / (base.num_pes * base.frequency)
        return _rms_log_error(dataclasses.replace(base, fp32_units=units), plan, measured)

    grid = np.linspace(math.log(initial / 8), math.log(initial * 8), 25)
    values = [error(g) for g in grid]
    k = int(np.argmin(values))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = error(a), error(b)
    for _ in range(20):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = error(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = error(b)
    best = min((values[k], grid[k]), (fa, a), (fb, b))
    return math.exp(best[1]), best[0]


def cpu_frequency() -> Tuple[float, str]:
    """The CPU clock in Hz and where it was read."""
    sysfs = Path('/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq')
    try:
        return float(sysfs.read_text()) * 1e3, str(sysfs)
    except (OSError, ValueError):
        pass
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('cpu mhz'):
                return float(line.split(':')[1]) * 1e6, '/proc/cpuinfo cpu MHz'
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_FREQUENCY, 'unknown (1 GHz assumed; fp32_units absorbs it)'


# ---------------------------------------------------------------- calibration

def _check_mode(latency_mode: str) -> str:
    if latency_mode not in MODES:
        raise ValueError(f'latency_mode must be one of {MODES}, got {latency_mode!r}')
    return latency_mode


def calibrate_cpu(threads: Optional[int] = None, quick: bool = False,
              latency_mode: str = 'auto', name: Optional[str] = None) -> Calibration:
    """Measure this machine and fit a :class:`Hardware` (see the module docstring).

    Args:
        threads (int, optional): torch intra-op threads during the measurement (the
            profile is valid for that count). Default: the current count.
        quick (bool): tiny sizes and few repeats (seconds; tests): a valid profile, but
            not a trustworthy one. Default: False (a few seconds).
        latency_mode (str): ``'max'``, ``'add'`` or ``'auto'`` (the better fit).
            Default: 'auto'.
        name (str, optional): the profile name. Default: ``<cpu key>-t<threads>``
            (``-quick`` appended in quick mode).
    """
    import torch
    threads = machine.optional_threads(threads)
    _check_mode(latency_mode)
    plan = QUICK if quick else FULL
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:  # measure; take nothing from a profile
        with torch.no_grad(), machine.environment_variable(ENV_PROFILE, None):
            dispatch = measure_dispatch(plan)
            gemm = measure_gemm(plan, threads)
            convs = measure_convs(plan)
            dram = measure_dram(plan)
            l2_bytes = machine.cache_size(2, 1024 ** 2)
            l2 = measure_cache_copy(plan, l2_bytes)
            llc = measure_cache_copy(plan, machine.cache_size(3, 8 * 1024 ** 2))
            gather = measure_gather(plan, l2_bytes // 2)
            engine = measure_engine(plan)
            kernels = measured_kernel_choices()
    finally:
        torch.set_num_threads(previous)
    measurements = dict(threads=threads, torch=torch.__version__,
                        isa=torch.backends.cpu.get_cpu_capability(),
                        date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), dispatch=dispatch,
                        gemm=gemm, ops=convs, dram=dram, l2=l2, llc=llc, gather=gather,
                        engine=engine, kernels=kernels, caches=machine.cache_sizes())
    hw, fit = fit_hardware(measurements, plan, latency_mode,
                           name or machine.profile_name(threads, quick))
    return Calibration(hw, measurements, fit, time.perf_counter() - start, quick)


def fit_hardware(m: dict, plan: Plan, latency_mode: str, name: str) -> Tuple[Hardware, dict]:
    """The :class:`Hardware` of the measurements ``m`` (see :func:`calibrate_cpu`)."""
    _check_mode(latency_mode)
    threads = m['threads']
    num_pes = int(min(threads, max(1, round(m['gemm']['speedup']))))
    frequency, frequency_source = cpu_frequency()
    efficiency = {int(n): e for n, e in m['gather']['efficiency'].items()}
    quantum, quantum_errors = fit_access_quantum(efficiency)
    dram = m['dram']['bandwidth']
    measured = m['ops']
    convs = [s for s in plan.convs if s.label in measured]
    initial = sum(s.macs for s in convs) / sum(measured[s.label] for s in convs)
    fits = {}
    for mode in ('max', 'add'):
        base = Hardware(name=name, num_pes=num_pes, fp32_units=1.0, frequency=frequency,
                        dram_bandwidth=dram, l2_ratio=max(1.0, m['l2']['bandwidth'] / dram),
                        launch_time=m['dispatch']['launch_time'], access_quantum=quantum,
                        latency_mode=mode)
        rate, error = fit_rate(base, plan, measured, initial)
        fits[mode] = (dataclasses.replace(base, fp32_units=rate / (num_pes * frequency)),
                      error)
    mode = min(fits, key=lambda k: fits[k][1]) if latency_mode == 'auto' else latency_mode
    hw = fits[mode][0]
    hw = dataclasses.replace(hw, notes=(
        f'calibrated on {machine.describe()}, {threads} thread(s), torch {m["torch"]} '
        f'({m["isa"]}), {m["date"]}; GEMM {m["gemm"]["rate"] / 1e9:.1f} GMAC/s, fitted '
        f'conv rate {hw.peak_macs / 1e9:.1f} GMAC/s, clock from {frequency_source}'))
    predicted = predict_calibration_ops(hw, plan)
    clear_caches()  # the fit filled the operator caches with trial devices
    llc_bytes = int(m['llc']['cache_bytes'])
    engine, engine_fit = fit_engine(calibration_samples(m['engine'], llc_bytes), llc_bytes)
    hw = dataclasses.replace(hw, engine=engine,
                             kernels=tuple(sorted(m.get('kernels', {}).items())))
    fit = dict(warnings=_warnings(m, fits[mode][1]), conv_rate=hw.peak_macs,
               initial_rate=initial, frequency=frequency,
               frequency_source=frequency_source, num_pes=num_pes,
               latency_mode=mode, requested_mode=latency_mode,
               rms_log_error={k: v[1] for k, v in fits.items()},
               access_quantum_rms_log_error={str(k): v for k, v in quantum_errors.items()},
               llc_ratio=m['llc']['bandwidth'] / dram,
               ops={k: dict(measured=measured[k], predicted=predicted[k]) for k in measured},
               engine=dict(engine_fit, coefficients=dict(engine.coefficients)))
    return hw, fit


def _warnings(m: dict, error: float) -> list:
    """Signs that the machine was busy or the cache sizes are wrong."""
    out = []
    if m['threads'] > 1 and m['gemm']['speedup'] < 1.2:
        out.append(f'{m["threads"]} threads run a large GEMM only '
                   f'{m["gemm"]["speedup"]:.2f}x as fast as one: is the machine busy?')
    if m['l2']['bandwidth'] < m['dram']['bandwidth']:
        out.append('copies that fit in L2 ran slower than DRAM copies (busy machine, or '
                   'wrong cache sizes in /sys/devices/system/cpu/cpu0/cache)')
    if error > 0.5:
        out.append(f'the calibration ops fit poorly (rms log error {error:.2f}): '
                   'measurements disturbed?')
    return out


def sidecar_path(profile: Union[str, Path]) -> Path:
    """Where the measurements of a saved profile go: ``<stem>.calibration.json``."""
    profile = Path(profile)
    return profile.with_name(profile.stem + '.calibration.json')


def save_calibration(cal: Calibration, path: Union[str, Path, None] = None) -> Path:
    """Save the profile (readable by ``load_profile``; default: this machine's path
    for its thread count, see :mod:`mmdyn.latency.machine`) and, next to it, the
    measurements and fit (``<stem>.calibration.json``). Returns the profile's path."""
    if path is None:
        path = machine.profile_path(cal.measurements['threads'], cal.quick)
    path = Path(path)
    if path.suffix != '.json':
        raise ValueError(f'a profile path must end in .json, got {str(path)!r}')
    path.parent.mkdir(parents=True, exist_ok=True)
    # the measurements first: a profile on disk always has its sidecar
    write_atomically(sidecar_path(path), json.dumps(cal.as_dict(), indent=2) + '\n')
    save_profile(cal.hardware, path)
    return path
