"""Caches that outlive a forward hold plain tensors.

A model may be called under ``torch.inference_mode`` (deployments, benchmarks), then
under ``torch.no_grad`` or with gradients on (an eval forward in a training script). A
tensor made in inference mode has no version counter, cannot be written outside
inference mode and cannot be saved for backward, so whatever a forward caches for later
forwards (folded and derived weights, patch extents) is built with inference mode
switched off.
"""
from typing import Callable, Optional, TypeVar

import torch
from torch import Tensor

T = TypeVar('T')


def build_outside_inference_mode(build: Callable[..., T], *args) -> T:
    """``build(*args)``; under inference mode it runs with inference mode off and no
    graph recorded (as inference mode would not have recorded one)."""
    if not torch.is_inference_mode_enabled():
        return build(*args)
    with torch.inference_mode(False), torch.no_grad():
        return build(*args)


def version_counter(tensor: Tensor) -> Optional[int]:
    """The tensor's in-place version counter, or None for an inference tensor (it has
    none)."""
    return None if tensor.is_inference() else tensor._version
