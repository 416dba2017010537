"""Never slower than dense: a dynamic block whose activation rate is above its measured
crossover computes its residual densely and applies the mask (the same output).

Gathering windows and scattering patches cost time that a dense convolution does not
pay, so above some activation rate the sparse executor is slower than the dense one.
Where that rate lies depends on the block's shape and on the CPU: it is measured where
the code runs, the first time a block class meets a size class (the sparse cost is
modelled as linear in the rate from runs at rates 1/2 and 1), and kept with the kernel
choices in the per-machine file of :mod:`mmdyn.ops.kernel_choice`.

``MMDYN_DENSE_FALLBACK``: ``measured`` (default), ``never`` (always the sparse
executor) or ``always`` (dense whenever a patch is active; tests of the dense route).
"""
import math
import os
import statistics
import time
from typing import Callable

from mmdyn.ops.kernel_choice import CHOOSER

ENV_POLICY = 'MMDYN_DENSE_FALLBACK'
POLICIES = ('measured', 'never', 'always')


def fallback_policy() -> str:
    policy = os.environ.get(ENV_POLICY, 'measured') or 'measured'
    if policy not in POLICIES:
        raise ValueError(f'{ENV_POLICY}={policy!r} is not one of {POLICIES}')
    return policy


def size_class(height: int, width: int) -> int:
    """Maps whose areas are within a factor sqrt(2) share a crossover."""
    return round(2 * math.log2(max(1, height * width)))


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: caches, folded weights, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_crossover(run_sparse: Callable[[float], object], run_dense: Callable[[], object],
                      repeats: int = 3) -> float:
    """The activation rate above which ``run_dense()`` is faster than
    ``run_sparse(rate)``; the sparse cost is taken as linear in the rate through its
    measurements at 1/2 and 1. 1.0: the sparse executor wins even with every patch on."""
    dense = _median_seconds(run_dense, repeats)
    half = _median_seconds(lambda: run_sparse(0.5), repeats)
    full = _median_seconds(lambda: run_sparse(1.0), repeats)
    if full <= dense:
        return 1.0
    slope = 2.0 * (full - half)
    if slope <= 0:  # no measurable growth with the rate: the fixed cost decides
        return 0.0
    return min(1.0, max(0.0, (dense - (full - slope)) / slope))


def runs_densely(rate: float, block_class: str, measure: Callable[[], float]) -> bool:
    """Whether a block of ``block_class`` at activation ``rate`` takes the dense route."""
    policy = fallback_policy()
    if policy != 'measured' or rate <= 0.0:
        return policy == 'always' and rate > 0.0
    return rate > CHOOSER.measured(f'crossover:{block_class}', measure)
