"""Straight-through Gumbel-softmax gate (Jang et al. 2017; LAS Sec. 3.5).

Convention (documented once, used by every mmdyn masker): the gate has two logits per
decision, index 0 = "compute" and index 1 = "skip". Training draws a stochastic hard
decision with soft gradients; evaluation is deterministic: compute iff logit0 >= logit1.
"""
import torch
from torch import Tensor


def gumbel_gate(logits: Tensor, tau: float, training: bool, dim: int = 1) -> Tensor:
    """Return the hard "compute" mask (values in {0, 1}) for two-way ``logits``.

    ``logits`` has size 2 along ``dim``; the result drops that dimension to size 1.
    In training the forward value is the one-hot argmax of
    ``softmax((logits + g) / tau)`` with Gumbel noise ``g`` and the backward pass uses
    the gradient of the soft probabilities (straight-through estimator).
    """
    if logits.shape[dim] != 2:
        raise ValueError(f'gumbel_gate expects 2 logits along dim {dim}, '
                         f'got shape {tuple(logits.shape)}')
    if not tau > 0:
        raise ValueError(f'temperature tau must be > 0, got {tau}')
    if not training:
        on, off = logits.unbind(dim)
        return (on >= off).to(logits.dtype).unsqueeze(dim)
    uniform = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-10)
    gumbel = -torch.log(-torch.log(uniform))
    soft = torch.softmax((logits + gumbel) / tau, dim=dim).narrow(dim, 0, 1)
    hard = (soft >= 0.5).to(soft.dtype)
    return hard - soft.detach() + soft
