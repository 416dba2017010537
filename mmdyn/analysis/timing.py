"""Alternating timing of several networks in one process, per part and whole."""
import ctypes
import ctypes.util
import statistics
import time
from collections import defaultdict

import torch

from mmdyn.models.backbones.resnet_parts import run_stem_and_pool
from mmdyn.ops.kernel_choice import time_call


def run_stem(backbone, x):
    """The stem and max-pool as the backbone's forward runs them (a dynamic backbone's
    own path, folded on its sparse path; mmdet's for a static twin)."""
    stem_forward = getattr(backbone, 'stem_forward', None)
    if stem_forward is not None:
        return stem_forward(x)[0]
    return run_stem_and_pool(backbone, x)


def stage_flops(record, parts):
    """Per-part (stem, layer1, ...) dense and mean executed FLOPs of one forward
    (static FLOPs plus the records of the blocks named ``<part>.<k>...``)."""
    dense, executed = defaultdict(float), defaultdict(float)
    for part, flops in record.static_flops.items():
        dense[part] += flops
        executed[part] += flops
    for block in record.blocks:
        stage = block.name.split('.')[0]
        dense[stage] += block.dense_flops
        executed[stage] += float(block.executed_flops.mean())
    return ({p: dense[p] for p in parts}, {p: executed[p] for p in parts})


def keep_freed_memory():
    """Let glibc reuse freed buffers instead of returning them to the OS, so that
    neither network pays page faults on every forward (PyTorch's CPU tuning guide
    recommends the same through jemalloc/tcmalloc). Applies to both networks. Kernel
    choices made afterwards are cached apart from the default process's: the
    allocator changes which kernel is faster (big temporaries stop costing page faults)."""
    from mmdyn.ops.kernel_choice import mark_allocator_tuned
    mark_allocator_tuned()
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 2 ** 31 - 1)
    libc.mallopt(m_top_pad, 1024 * 1024 * 1024)


def _timed_pass(backbone, x):
    """Seconds of the stem and of every stage in one forward."""
    times = []
    start = time.perf_counter()
    out = run_stem(backbone, x)
    times.append(time.perf_counter() - start)
    for name in backbone.res_layers:
        begin = time.perf_counter()
        out = getattr(backbone, name)(out)
        times.append(time.perf_counter() - begin)
    return times


@torch.no_grad()
def time_models(models: dict, x, warmup: int, repeats: int):
    """Alternate passes of every model (``{name: backbone}``) so that all see the same
    machine state; return ``{name: (median per-part seconds, median whole pass)}``."""
    runs = {name: [] for name in models}
    for step in range(warmup + repeats):
        for name, model in models.items():
            times = _timed_pass(model, x)
            if step >= warmup:
                runs[name].append(times)
    return {name: ([statistics.median(p) for p in zip(*r)],
                   statistics.median(sum(t) for t in r)) for name, r in runs.items()}


def time_alternating(runs: dict, warmup: int, repeats: int, device='cpu') -> dict:
    """Median seconds of ``runs`` (``{name: callable}``), their calls alternating so that
    all see the same machine state (as :func:`time_models`). With a CUDA ``device``
    every call is timed from a synchronised start to its synchronised end."""
    times = {name: [] for name in runs}
    device = torch.device(device)
    for step in range(warmup + repeats):
        for name, run in runs.items():
            seconds = time_call(run, device)
            if step >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}
