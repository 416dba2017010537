"""Never slower than dense: a dynamic block whose activation rate is above its measured
crossover computes its residual densely and applies the mask (the same output).

Gathering windows and scattering patches cost time that a dense convolution does not
pay, so above some activation rate the sparse executor is slower than the dense one.
Where that rate lies depends on the block's shape and on the CPU: it is measured where
the code runs, the first time a block class meets a size class (the sparse cost is
modelled as linear in the rate from runs at about 1/2 and 1, or one patch and 1/2 where
the crossover lies lower; the routes' runs alternate), and kept with the kernel choices
in the per-machine file of :mod:`mmdyn.ops.kernel_choice`, per device (the entry names
it; CUDA timings synchronise). The sparse route is timed only at rates the block's grid
can draw (whole patches, at least one); on a device that cannot be timed (``meta``) the
block stays sparse. The records count the FLOPs the mask selects on
either route: a FLOPs figure does not depend on the machine's timings.

``MMDYN_DENSE_FALLBACK``: ``measured`` (default), ``never`` (always the sparse
executor) or ``always`` (dense whenever a patch is active; tests of the dense route).

``MMDYN_LATENCY_PROFILE`` (a profile name such as ``cpu`` or a .json path, see
:mod:`mmdyn.latency`): on CPU tensors, the crossover of every block whose shape the
latency predictor's engine model covers (LAS and SAR refinement bottlenecks, dilation 1,
batch 1) is predicted from that calibrated profile instead of timed, so the first
forward times no routes (:func:`predicted_crossovers` lists what was chosen); other
blocks and devices are measured as above (the kernel choices the profile carries
replace their timing too: :mod:`mmdyn.ops.kernel_choice`). A profile without an engine
model (the GPU profiles) is an error.
"""
import math
import os
import statistics
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import torch

from mmdyn.ops.kernel_choice import (CHOOSER, ENV_PROFILE, TIMEABLE_DEVICES, device_tag,
                                     load_cpu_profile, time_call)

ENV_POLICY = 'MMDYN_DENSE_FALLBACK'
POLICIES = ('measured', 'never', 'always')
_PREDICTED: Dict[str, float] = {}  # block class -> crossover predicted from the profile


def fallback_policy() -> str:
    policy = os.environ.get(ENV_POLICY, 'measured') or 'measured'
    if policy not in POLICIES:
        raise ValueError(f'{ENV_POLICY}={policy!r} is not one of {POLICIES}')
    return policy


def size_class(height: int, width: int) -> int:
    """Maps whose areas are within a factor sqrt(2) share a crossover."""
    return round(2 * math.log2(max(1, height * width)))


def _interleaved_medians(routes: Dict[str, Callable[[], object]], device: torch.device,
                         repeats: int) -> Dict[str, float]:
    """``{name: median seconds}`` of each route, timed in alternating rounds after one
    warm-up round (caches, folded weights, allocator), so that a passing slowdown of
    the machine falls on every route alike rather than on all of one route's calls."""
    times = {name: [] for name in routes}
    for step in range(1 + repeats):
        for name, route in routes.items():
            seconds = time_call(route, device)
            if step:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def _rate_at_equal_cost(low: Tuple[float, float], high: Tuple[float, float],
                        dense: float) -> float:
    """The rate where the sparse cost, linear through the ``(rate, seconds)`` points
    ``low`` and ``high``, meets ``dense``. Without measurable growth with the rate the
    fixed cost decides: 0.0 where ``high`` is slower than ``dense``, else 1.0."""
    slope = (high[1] - low[1]) / (high[0] - low[0])
    if slope <= 0:
        return 0.0 if high[1] > dense else 1.0
    return low[0] + (dense - low[1]) / slope


def measure_crossover(run_sparse: Callable[[float], object], run_dense: Callable[[], object],
                      cells: int, device='cpu', repeats: int = 5,
                      run_dense_full: Optional[Callable[[], object]] = None,
                      full_mask_dense: bool = False) -> float:
    """The activation rate above which ``run_dense()`` (the dense route with a partial
    mask) is faster than ``run_sparse(rate)`` on ``device``. The sparse cost is taken as
    linear in the rate through its measurements at about 1/2 and 1; a crossover that
    line puts below 1/2 is measured there instead of extrapolated: the line through one
    patch (``1 / cells``) and 1/2. ``cells``: the patches of the block's grid per sample;
    the lower rate is ``floor(cells / 2) / cells``, a count the grid can draw (a
    one-patch grid has no lower rate: any active patch is the whole map).
    ``run_dense_full()``: the dense route with every patch on (it skips applying the
    mask); when it beats the sparse executor at rate 1 the crossover is at most
    ``(cells - 1) / cells``, so that a full mask runs densely; ``full_mask_dense`` sets
    that bound without timing it (a block whose dense route with every patch on is
    exactly its dense block: SAR's refinement). 1.0: the sparse executor wins even with
    every patch on. The routes are timed in alternating rounds (median of ``repeats``:
    six measurements of LAS-ResNet-101's stage-3 crossover, 50x76 map, S = 7, spread
    over 0.912-0.926 with 5 rounds and 0.873-0.965 with 3, in one process, AMD EPYC
    family 25, 2 threads, 2026-12-05; the measurement took 0.71 s against 0.48 s)."""
    device = torch.device(device)
    low_rate = (cells // 2) / cells
    routes = {'full': lambda: run_sparse(1.0), 'dense': run_dense}
    if run_dense_full is not None and not full_mask_dense:
        routes['dense_full'] = run_dense_full
    if low_rate > 0.0:
        routes['low'] = lambda: run_sparse(low_rate)
    seconds = _interleaved_medians(routes, device, repeats)
    upper = 1.0
    if full_mask_dense or seconds.get('dense_full', math.inf) < seconds['full']:
        upper = (cells - 1) / cells
    dense = seconds['dense']
    if seconds['full'] <= dense:
        return upper
    if low_rate <= 0.0:  # one patch per sample: the full map or nothing
        return 0.0
    low = (low_rate, seconds['low'])
    crossover = _rate_at_equal_cost(low, (1.0, seconds['full']), dense)
    one_patch = 1.0 / cells
    if crossover < low_rate and one_patch < low_rate:
        again = _interleaved_medians({'one': lambda: run_sparse(one_patch), 'low': routes['low'],
                                      'dense': run_dense}, device, repeats)
        dense = again['dense']
        crossover = min(low_rate, _rate_at_equal_cost((one_patch, again['one']),
                                                      (low_rate, again['low']), dense))
    return min(upper, max(0.0, crossover))


@lru_cache(maxsize=None)
def _predicted_crossover(profile: str, shape: Tuple) -> float:
    """A LAS bottleneck's ``shape`` (see :func:`runs_densely`), or ``('sar', ...)``: a
    SAR refinement bottleneck's arguments of ``mmdyn.latency.sar.refinement_crossover``."""
    from mmdyn.latency import dense_route_crossover
    from mmdyn.latency.sar import refinement_crossover
    if shape[0] == 'sar':
        return refinement_crossover(load_cpu_profile(profile), *shape[1:])
    return dense_route_crossover(load_cpu_profile(profile), *shape)


def predicted_crossovers() -> Dict[str, float]:
    """``{block class: crossover rate}`` predicted from ``MMDYN_LATENCY_PROFILE`` in this
    process (the engine's decisions; the measured ones live in the kernel-choice file)."""
    return dict(_PREDICTED)


def runs_densely(rate: float, block_class: str, measure: Callable[[], float],
                 device='cpu', shape: Optional[Tuple] = None) -> bool:
    """Whether a block of ``block_class`` at activation ``rate`` on ``device`` takes the
    dense route. ``shape`` (``(in, mid, out channels, H, W, S, stride, downsample)`` of
    a LAS bottleneck the latency predictor covers, ``('sar', ...)`` of a SAR refinement
    bottleneck, else None) lets a CPU crossover come from ``MMDYN_LATENCY_PROFILE``."""
    policy, device = fallback_policy(), torch.device(device)
    if policy != 'measured' or rate <= 0.0:
        return policy == 'always' and rate > 0.0
    if device.type not in TIMEABLE_DEVICES:
        return False
    profile = os.environ.get(ENV_PROFILE, '')
    if profile and shape is not None and device.type == 'cpu':
        crossover = _PREDICTED[block_class] = _predicted_crossover(profile, tuple(shape))
        return rate > crossover
    return rate > CHOOSER.measured(f'crossover:{device_tag(device)}:{block_class}', measure)
