"""KeypointMask and OracleMask (CAD-ResNet mask sources) on real images."""
import copy

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import MODELS
from skimage import data as skdata

from mmdyn.models import CADResNet, KeypointMask, OracleMask, oracle_keep_map  # registers them
from mmdyn.ops.multires import block_grid

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def normalised(*names, size=(128, 192)):
    """skimage RGB images resized to ``size`` (H, W), normalised as mmseg/mmdet's data
    preprocessor does (bgr_to_rgb=True: the batch is RGB)."""
    images = [cv2.resize(getattr(skdata, n)(), size[::-1], interpolation=cv2.INTER_AREA)
              for n in names]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return (batch - MEAN) / STD


def grids_for(inputs, steps=2, output_stride=8):
    height, width = -(-inputs.shape[2] // output_stride), -(-inputs.shape[3] // output_stride)
    features = torch.zeros(inputs.shape[0], 4, height, width)
    return features, [block_grid(height, width, s + 1) for s in range(steps)]


@pytest.fixture(scope='module')
def astronaut():
    return normalised('astronaut')


def test_keypoint_masks_shapes_and_batch(astronaut):
    inputs = normalised('astronaut', 'coffee')
    features, grids = grids_for(inputs)
    assert grids == [(8, 12), (4, 6)]
    source = MODELS.build(dict(type='KeypointMask', num_keypoints=64, dilations=(9, 17)))
    masks = source(inputs, features, grids)
    assert len(masks) == 2
    for mask, grid in zip(masks, grids):
        assert mask.dtype == torch.bool and tuple(mask.shape) == (2, *grid)
    # Each image's masks do not depend on the rest of the batch.
    single = source(inputs[1:], features[1:], grids)
    assert all(torch.equal(m[1:], s) for m, s in zip(masks, single))
    # The strongest distinct keypoints: exactly num_keypoints on a textured image.
    assert int(source.saliency(astronaut).sum()) == 64
    copy.deepcopy(source)  # the cached cv2 detector does not block deepcopy


def test_keypoint_masks_monotone(astronaut):
    features, grids = grids_for(astronaut)
    small = KeypointMask(num_keypoints=64, dilations=(9, 17))(astronaut, features, grids)
    large = KeypointMask(num_keypoints=64, dilations=(17, 33))(astronaut, features, grids)
    more = KeypointMask(num_keypoints=256, dilations=(9, 17))(astronaut, features, grids)
    for s, l, m in zip(small, large, more):
        assert bool((l | ~s).all()) and bool((m | ~s).all())
    assert any(bool((l & ~s).any()) for s, l in zip(small, large))
    few = KeypointMask(num_keypoints=16).saliency(astronaut)
    many = KeypointMask(num_keypoints=64).saliency(astronaut)
    assert bool((many | ~few).all()) and int(many.sum()) > int(few.sum())


def test_keypoint_keep_fraction(astronaut):
    features, grids = grids_for(astronaut)
    for mask in KeypointMask(num_keypoints=64, dilations=(9, 17))(astronaut, features, grids):
        assert 0.0 < mask.float().mean().item() < 1.0


@pytest.mark.parametrize('dilations', [(0, 9), (9, 4), (-3,), (9, 2.0), (True,), ('9',),
                                       (), 9, None])
def test_keypoint_bad_dilations(dilations):
    with pytest.raises(ValueError, match='dilations'):
        KeypointMask(dilations=dilations)


def test_keypoint_bad_arguments(astronaut):
    with pytest.raises(ValueError, match='num_keypoints'):
        KeypointMask(num_keypoints=0)
    with pytest.raises(ValueError, match='output_stride'):
        KeypointMask(output_stride=0)
    features, grids = grids_for(astronaut, steps=2)
    with pytest.raises(ValueError, match=r'1 dilation.*2 adaptive'):
        KeypointMask(dilations=(9,))(astronaut, features, grids)


def test_oracle_keep_map_hand_computed():
    gt = torch.tensor([[[0, 1, 2, 255, 1],
                        [0, 0, 0, 0, 0],
                        [1, 1, 1, 1, 1],
                        [2, 2, 2, 2, 2]]])
    coarse = torch.tensor([[[1, 1, 0, 0, 0],
                            [1, 0, 0, 0, 0],
                            [1, 1, 1, 1, 1],
                            [2, 2, 2, 2, 0]]])
    fine = torch.tensor([[[0, 0, 2, 255, 1],
                          [2, 0, 0, 0, 0],
                          [1, 1, 1, 1, 1],
                          [2, 2, 2, 2, 2]]])
    # (0,0), (0,2), (0,4), (3,4): coarse wrong, fine right; (0,1): coarse right;
    # (1,0): both wrong; (0,3): ignored.
    expected = torch.zeros(1, 4, 5, dtype=torch.bool)
    for y, x in [(0, 0), (0, 2), (0, 4), (3, 4)]:
        expected[0, y, x] = True
    keep = oracle_keep_map(coarse, fine, gt)
    assert keep.dtype == torch.bool and torch.equal(keep, expected)
    unignored = oracle_keep_map(coarse, fine, gt, ignore_index=None)
    assert torch.equal(unignored, expected | (torch.arange(20).view(1, 4, 5) == 3))
    dilated = oracle_keep_map(coarse, fine, gt, dilation=3)
    expected3 = torch.zeros(1, 4, 5, dtype=torch.bool)
    expected3[0, :2, :] = True
    expected3[0, 2:, 3:] = True
    assert torch.equal(dilated, expected3)
    with pytest.raises(ValueError, match='dilation'):
        oracle_keep_map(coarse, fine, gt, dilation=2)
    with pytest.raises(ValueError, match='same shape'):
        oracle_keep_map(coarse, fine, gt[:, :3])
    with pytest.raises(TypeError, match='integer'):
        oracle_keep_map(coarse.float(), fine, gt)


def test_oracle_mask_without_maps_raises(astronaut):
    source = MODELS.build(dict(type='OracleMask'))
    features, grids = grids_for(astronaut)
    with pytest.raises(RuntimeError, match='set_keep_maps'):
        source(astronaut, features, grids)
    with pytest.raises(ValueError, match='dilation'):
        OracleMask(dilation=0)


def test_oracle_mask_blocks_follow_maps():
    inputs = torch.zeros(2, 3, 64, 96)
    features, grids = grids_for(inputs)
    source = OracleMask()
    maps = torch.zeros(2, 64, 96, dtype=torch.bool)
    maps[0, 3 * 8, 5 * 8] = True          # OS8 cell (3, 5)
    maps[0, 3 * 8 + 1, 9 * 8] = True      # off the stride-8 lattice: not sampled
    source.set_keep_maps(maps)
    step1, step2 = source(inputs, features, grids)
    assert step1.shape == (2, 4, 6) and step2.shape == (2, 2, 3)
    assert step1[0].nonzero().tolist() == [[1, 2]] and not step1[1].any()
    assert step2[0].nonzero().tolist() == [[0, 1]] and not step2[1].any()

    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 64, 96, generator=generator) < 0.01
    source.set_keep_maps(maps.to(torch.uint8))
    cells = maps[:, ::8, ::8]
    for step, mask in enumerate(source(inputs, features, grids), 1):
        size = 2 ** step
        for b in range(2):
            for r in range(mask.shape[1]):
                for c in range(mask.shape[2]):
                    block = cells[b, r * size:(r + 1) * size, c * size:(c + 1) * size]
                    assert bool(mask[b, r, c]) == bool(block.any())
    # A dilation grows the kept blocks.
    wide = OracleMask(dilation=9)
    wide.set_keep_maps(maps)
    for narrow, grown in zip(source(inputs, features, grids), wide(inputs, features, grids)):
        assert bool((grown | ~narrow).all())

    with pytest.raises(ValueError, match='shape'):
        source.set_keep_maps(maps[0])
    with pytest.raises(ValueError, match='0 and 1'):
        source.set_keep_maps(maps.float() * 2)
    source.set_keep_maps(maps[:1])
    with pytest.raises(ValueError, match='shape'):
        source(inputs, features, grids)
    source.set_keep_maps(None)
    with pytest.raises(RuntimeError, match='set_keep_maps'):
        source(inputs, features, grids)


@pytest.mark.parametrize('base_output_stride, dilations', [(16, (9,)), (32, (9, 17))])
def test_cad_resnet_with_keypoint_mask(base_output_stride, dilations):
    torch.manual_seed(0)
    model = CADResNet(50, base_output_stride=base_output_stride, init_cfg=None,
                      mask_source=dict(type='KeypointMask', dilations=dilations))
    model.eval()
    inputs = normalised('astronaut', size=(64, 96))
    with torch.no_grad():
        outs = model(inputs)
    assert outs[-1].shape == (1, 2048, 8, 12)
    rate = model.sparsity_summary().activation_rate
    assert rate.shape == (1,)
    assert 0.0 < float(rate) <= 1.0
