"""Soak (short version of tools/analysis/soak.py): sparse forwards over varying odd
sizes and masks keep the resident memory flat."""
import torch

from backbone_table import CAD_RANDOM, SAR_SMALL
from mmdyn.analysis.soak import resident_mib, soak
from mmdyn.models.backbones import CADResNet, LASResNet, SARResNet

GROWTH_LIMIT_MIB = 48  # generous: allocator noise; a per-forward leak of activations or
# caches over 48 forwards would exceed it


def test_resident_memory_stays_flat():
    torch.manual_seed(0)
    backbones = dict(
        las=LASResNet(18, granularity=(4, 4, 2, 1), init_cfg=None),
        sar=SARResNet(18, sar_setting='G2s2a2b1', init_cfg=None, **SAR_SMALL),
        cad=CADResNet(50, init_cfg=None, **CAD_RANDOM))
    # warm-up on the very sizes and masks the measured pass replays (same seed): what is
    # kept per input shape (oneDNN's primitive cache, weights packed for a shape, kernel
    # choices and crossovers per size class) is bounded but fills with every new shape;
    # a leak grows on every forward, also over shapes already seen
    soak(backbones, 48, 17, 41, every=48, seed=1, log=lambda _: None)
    start = resident_mib()
    curve = soak(backbones, 48, 17, 41, every=12, seed=1, log=lambda _: None)
    assert len(curve) == 5
    growth = max(rss for _, rss in curve) - start
    assert growth < GROWTH_LIMIT_MIB, curve
    # the caches are bounded: one fold per conv, tap rows only for the last forward
    cad = backbones['cad']
    assert len(cad._tap_cache) <= 8
