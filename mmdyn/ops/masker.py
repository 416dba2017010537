"""The patch masker: one spatial decision per output patch (LAS Fig. 2: a coarse mask
M_coarse on the patch grid, upsampled to the block output), optionally one per channel
group (SAR Eq. 2: G masks from 2G logits, a grouped 1x1 conv)."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gumbel import gumbel_gate


class PatchMasker(nn.Module):
    """Adaptive average pool to the patch grid, then a 1x1 conv to two logits (per
    group: with ``groups=G`` the conv is grouped and gives 2G logits, G masks).

    The 1x1 conv is held as plain parameters (``weight``, ``bias``) rather than an
    ``nn.Conv2d`` child, so a backbone's generic "Kaiming for every Conv2d" init does
    not overwrite the gate init. ``init_on_bias`` makes every block start (almost)
    dense, as in the reference training recipe, so training starts from the static
    network.
    """

    def __init__(self, in_channels: int, init_on_bias: float = 3.0, groups: int = 1):
        super().__init__()
        if in_channels % groups:
            raise ValueError(f'groups={groups} does not divide the masker\'s '
                             f'{in_channels} input channels')
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(2 * groups, in_channels // groups, 1, 1))
        self.bias = nn.Parameter(torch.empty(2 * groups))
        self.init_on_bias = init_on_bias
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight, std=1e-3)
        with torch.no_grad():
            self.bias.copy_(torch.tensor([self.init_on_bias, 0.0]).repeat(self.groups))

    def logits(self, x: Tensor, grid_hw) -> Tensor:
        """``[B, 2G, rows, cols]``: (compute, skip) logit pairs, group by group."""
        return F.conv2d(F.adaptive_avg_pool2d(x, grid_hw), self.weight, self.bias,
                        groups=self.groups)

    def forward(self, x: Tensor, grid_hw, tau: float) -> Tensor:
        """Hard (straight-through in training) mask of shape [B, G, rows, cols]."""
        logits = self.logits(x, grid_hw)
        batch, _, rows, cols = logits.shape
        pairs = logits.view(batch, self.groups, 2, rows, cols)
        return gumbel_gate(pairs, tau, self.training, dim=2).squeeze(2)

    def decision_weight(self):
        """Weight ``[1, C, 1, 1]`` and bias ``[1]`` of the logit difference l0 - l1.

        LAS Appendix B.1: pooling and a 1x1 conv are both linear, so
        pool(conv(x)) == conv(pool(x)); the difference runs as one extra output
        channel of the block's conv1 at full resolution and is pooled afterwards.
        The block computes iff the pooled difference is >= 0. (One group only.)
        """
        if self.groups != 1:
            raise ValueError('decision_weight() is defined for a single group')
        weight, bias = self.weight.detach(), self.bias.detach()
        return weight[0:1] - weight[1:2], bias[0:1] - bias[1:2]
