"""Mask figures a reader understands: a legend in the method's words, mosaics split
into pages of bounded width, per-backbone vocabulary."""
import cv2
import numpy as np
import pytest
import torch

from mmdyn.models.backbones import (CADResNet, LASResNet, SARResNet, SFSIResNet)
from mmdyn.ops import MaskTerms
from mmdyn.visualization import legend_strip, save_block_overlays


def test_every_method_names_its_rate_and_masks():
    terms = {cls: cls.mask_terms for cls in (LASResNet, SARResNet, SFSIResNet, CADResNet)}
    assert terms[LASResNet].rate == 'activation rate'
    assert terms[SARResNet].rate == 'refine rate'
    assert terms[SFSIResNet].rate == 'sampling rate'
    assert terms[CADResNet].rate == 'keep ratio'
    assert len({t.selected for t in terms.values()}) == 4  # no two methods share words


def test_legend_strip_shows_both_swatches():
    strip = legend_strip(400, MaskTerms('activation rate', 'computed patch', 'skipped patch'))
    assert strip.shape[1] == 400 and strip.dtype == np.uint8
    pixels = strip.reshape(-1, 3).astype(int)
    tinted = (pixels[:, 0] > pixels[:, 2] + 60).any()  # the red-tinted 'selected' swatch
    dark = (pixels.max(1) < 70).sum() > 50  # the darkened 'skipped' swatch and the text
    assert tinted and dark


def test_deep_network_mosaic_is_paged_and_bounded(tmp_path):
    """ResNet-101 has 33 blocks: at 4 x 4 tiles per page the mosaic takes three pages,
    none wider than page_width, each ending in the legend."""
    model = LASResNet(101, granularity=(4, 4, 2, 1), base_channels=8, stem_channels=8,
                      init_cfg=None).eval()
    model.set_forced_activation(0.5)
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 160))
    image = np.full((96, 160, 3), 128, np.uint8)
    paths = save_block_overlays(image, model.records, 0, (96, 160), str(tmp_path),
                                terms=model.mask_terms, page_width=480)
    pages = sorted(p for p in paths if 'all_blocks' in p)
    assert [p.rsplit('/', 1)[1] for p in pages] == [f'all_blocks_{k}.png' for k in (1, 2, 3)]
    assert len(paths) == 33 + 3
    for page in pages:
        height, width = cv2.imread(page).shape[:2]
        assert width <= 480
    tile = cv2.imread(str(tmp_path / 'layer3.22.png'))
    assert tile.shape[1] == 160 and tile.shape[0] > 96


@pytest.mark.parametrize('count', [1, 16])
def test_one_page_keeps_the_plain_name(tmp_path, count):
    model = LASResNet(18, granularity=(4, 2, 1, 1), base_channels=8, stem_channels=8,
                      init_cfg=None).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    paths = save_block_overlays(np.zeros((64, 64, 3), np.uint8), model.records, 0, (64, 64),
                                str(tmp_path), rows_per_page=count)
    mosaics = [p.rsplit('/', 1)[1] for p in paths if 'all_blocks' in p]
    assert mosaics == (['all_blocks.png'] if count == 16 else
                       [f'all_blocks_{k}.png' for k in (1, 2)])
