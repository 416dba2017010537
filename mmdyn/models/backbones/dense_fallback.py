"""Never slower than dense: a dynamic block whose activation rate is above its measured
crossover computes its residual densely and applies the mask (the same output).

Gathering windows and scattering patches cost time that a dense convolution does not
pay, so above some activation rate the sparse executor is slower than the dense one.
Where that rate lies depends on the block's shape and on the CPU: it is measured where
the code runs, the first time a block class meets a size class (the sparse cost is
modelled as linear in the rate from runs at about 1/2 and 1), and kept with the kernel
choices in the per-machine file of :mod:`mmdyn.ops.kernel_choice`, per device (the
entry names it; CUDA timings synchronise). The sparse route is timed only at rates the
block's grid can draw (whole patches, at least one); on a device that cannot be timed
(``meta``) the block stays sparse. The records count the FLOPs the mask selects on
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


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: caches, folded weights, allocator
    return statistics.median(time_call(fn, device) for _ in range(repeats))


def measure_crossover(run_sparse: Callable[[float], object], run_dense: Callable[[], object],
                      cells: int, device='cpu', repeats: int = 3,
                      run_dense_full: Optional[Callable[[], object]] = None,
                      full_mask_dense: bool = False) -> float:
    """The activation rate above which ``run_dense()`` (the dense route with a partial
    mask) is faster than ``run_sparse(rate)`` on ``device``; the sparse cost is taken as
    linear in the rate through its measurements at about 1/2 and 1. ``cells``: the
    patches of the block's grid per sample; the lower rate is ``floor(cells / 2) /
    cells``, a count the grid can draw (a one-patch grid has no lower rate: any active
    patch is the whole map). ``run_dense_full()``: the dense route with every patch on
    (it skips applying the mask); when it beats the sparse executor at rate 1 the
    crossover is at most ``(cells - 1) / cells``, so that a full mask runs densely;
    ``full_mask_dense`` sets that bound without timing it (a block whose dense route
    with every patch on is exactly its dense block: SAR's refinement).
    1.0: the sparse executor wins even with every patch on."""
    device = torch.device(device)
    full = _median_seconds(lambda: run_sparse(1.0), device, repeats)
    upper = 1.0
    if full_mask_dense or (run_dense_full is not None
                           and _median_seconds(run_dense_full, device, repeats) < full):
        upper = (cells - 1) / cells
    dense = _median_seconds(run_dense, device, repeats)
    if full <= dense:
        return upper
    low_rate = (cells // 2) / cells
    if low_rate <= 0.0:  # one patch per sample: the full map or nothing
        return 0.0
    low = _median_seconds(lambda: run_sparse(low_rate), device, repeats)
    slope = (full - low) / (1.0 - low_rate)
    if slope <= 0:  # no measurable growth with the rate: the fixed cost decides
        return 0.0
    return min(upper, max(0.0, (dense - (full - slope)) / slope))


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
