"""Storage the sparse executors reuse across forwards for their large temporaries.

A fresh tensor larger than glibc's mmap threshold (at most 32 MB) is mapped anew on
every allocation and unmapped when freed, so every forward pays a page fault per 4 KB
page of it: on the AMD EPYC (family 25) a 55 MB row gather into fresh memory took
17 ms, into reused memory 2 ms (2026-12-04). Gathering into a :class:`RowBuffers`
slot avoids that cost.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class RowBuffers:
    """Named slots of reusable storage. ``take(name, shape, like)`` returns an
    uninitialised tensor on the storage kept under ``name`` (reallocated when too
    small, of another dtype or device, or made in inference mode and taken outside it,
    where it could not be written); the next ``take`` of the same name overwrites it,
    so a caller alternates names between a map and the one computed from it, and
    gives what it returns fresh memory. Not for concurrent forwards of one module."""

    def __init__(self):
        self._flat = {}

    def take(self, name: str, shape, like: Tensor) -> Tensor:
        numel = 1
        for size in shape:
            numel *= size
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype \
                or flat.device != like.device \
                or (flat.is_inference() and not torch.is_inference_mode_enabled()):
            self._flat.pop(name, None)  # free the old storage before allocating
            flat = like.new_empty(numel + numel // 8)  # some room for larger inputs
            self._flat[name] = flat
        return flat[:numel].view(shape)

    def clear(self):
        self._flat.clear()

    def __getstate__(self):
        """Copies and pickles (``copy.deepcopy(model)``, ``torch.save(model)``) start
        empty: the storage is scratch, not state."""
        return {'_flat': {}}


def buffer_slot(buffers: Optional[RowBuffers], name: str, shape, like: Tensor
                ) -> Optional[Tensor]:
    """The slot ``name`` of ``buffers`` for an ``out=`` op (see :meth:`RowBuffers.take`),
    or None when no buffers are given or grad mode is on (an ``out=`` op records no
    autograd graph): the caller then computes into fresh memory."""
    if buffers is None or torch.is_grad_enabled():
        return None
    return buffers.take(name, shape, like)


def gather_rows(rows: Tensor, index: Tensor, buffers: Optional[RowBuffers] = None,
                name: str = 'gather') -> Tensor:
    """``rows[index]`` (``index`` flattened) as ``[index.numel(), C]``: into the slot
    ``name`` of ``buffers`` (:func:`buffer_slot`), else into fresh memory (a row
    gather: faster than ``index_select`` there)."""
    index = index.reshape(-1)
    out = buffer_slot(buffers, name, (index.numel(), rows.shape[1]), rows)
    if out is None:
        return F.embedding(index, rows)
    return torch.index_select(rows, 0, index, out=out)


def add_at_rows(dest: Tensor, source: Tensor, pixels: Tensor, values: Tensor,
                relu: bool = False, buffers: Optional[RowBuffers] = None) -> Tensor:
    """``dest[pixels] = source[pixels] + values`` (then ReLU if ``relu``; ``source`` may
    be ``dest``): the source rows gathered (:func:`gather_rows`, slot ``'scatter'``), the
    values added, the rows copied to ``dest``. Returns ``dest``."""
    updated = gather_rows(source, pixels, buffers, 'scatter')
    updated.add_(values)  # in-place add promotes across float dtypes
    if relu:
        updated.relu_()
    return dest.index_copy_(0, pixels, updated.to(dest.dtype))
