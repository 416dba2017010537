"""Soak run: many sparse inference forwards with varying (odd) input sizes and masks,
sampling the process's resident memory, to show that nothing accumulates across
forwards (records, fold caches, tap-index caches, workspaces)."""
import ctypes
import os
import random

import torch

from mmdyn.models.backbones import CADResNet

_PAGE = os.sysconf('SC_PAGE_SIZE')


def resident_mib() -> float:
    """Resident set size of this process (Linux ``/proc/self/statm``), MiB, after glibc
    has returned the free memory it holds (``malloc_trim``, where glibc is the
    allocator): what stays resident is what is still allocated, not how freed buffers
    of varying sizes happened to fragment the heap (+-40 MiB between samples otherwise)."""
    _trim_heap()
    with open('/proc/self/statm') as statm:
        return int(statm.read().split()[1]) * _PAGE / 2 ** 20


def _trim_heap():
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: sample as is
        pass


def vary_masks_(backbone, generator: random.Random, step: int):
    """New masks for the next forward: a random forced activation rate (or the
    backbone's own maskers every fourth forward) for LAS/SAR, random keep masks on
    the mask source's grids for CAD (by a seeded ``RandomMask``)."""
    if isinstance(backbone, CADResNet):
        backbone.mask_source.keep_ratio = generator.random()
        backbone.mask_source.seed = step
    elif step % 4 == 3:
        backbone.set_forced_activation(None)
    else:
        backbone.set_forced_activation(generator.random(), seed=step)


@torch.no_grad()
def soak(backbones: dict, iterations: int, min_size: int, max_size: int, batch: int = 1,
         every: int = 100, seed: int = 0, log=print):
    """Run ``iterations`` sparse forwards, cycling through ``backbones`` (name ->
    model), each on a fresh input of random height and width in [min_size, max_size]
    (odd sizes included) with fresh masks. Returns ``[(iteration, rss_mib)]`` sampled
    before the first forward and every ``every`` forwards."""
    generator = random.Random(seed)
    for backbone in backbones.values():
        backbone.eval()
        backbone.set_execution_mode('sparse')
    names = list(backbones)
    curve = [(0, resident_mib())]
    log(f'iteration {0:6d}  rss {curve[-1][1]:8.1f} MiB')
    for step in range(1, iterations + 1):
        backbone = backbones[names[step % len(names)]]
        height, width = (generator.randint(min_size, max_size) for _ in range(2))
        vary_masks_(backbone, generator, step)
        x = torch.randn(batch, 3, height, width)
        outputs = backbone(x)
        assert all(torch.isfinite(o).all() for o in outputs), (height, width)
        del outputs, x
        if step % every == 0 or step == iterations:
            curve.append((step, resident_mib()))
            log(f'iteration {step:6d}  rss {curve[-1][1]:8.1f} MiB  (last input '
                f'{height}x{width}, {names[step % len(names)]})')
    return curve
