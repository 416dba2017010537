"""CAD-VGG: Guarantee 2 against the plain D2-Net networks (odd sizes), sparse cells ==
dense reference, adaptive max-pool on rows, multiply-adds from cells against
mmengine's FlopAnalyzer and an independent cell count, keypoint / random / inverse
masks, clear errors."""
import numpy as np
import pytest
import torch
from mmengine.analysis import FlopAnalyzer

from mmdyn.models.backbones import CADVGG, D2NetVGG
from mmdyn.models.mask_sources import FullResolutionMask, SiftKeypointMask
from mmdyn.ops.cell_pool import max_pool_rows
from mmdyn.ops.multires import CellLayout, adaptive_downsample, dense_to_rows, step_levels

SIZE = (27, 37)   # odd: partial blocks at every pool
WIDTH = 8         # base_channels: VGG16's layout at 1/8 of its width keeps the tests fast


def pair(output_stride, source, seed=0):
    """A CADVGG and the plain networks with the same (random) weights."""
    torch.manual_seed(seed)
    cad = CADVGG(output_stride=output_stride, mask_source=source, base_channels=WIDTH).eval()
    state = {k: v for k, v in cad.state_dict().items() if not k.startswith('mask_source')}
    fine = D2NetVGG(output_stride=output_stride, base_channels=WIDTH).eval()
    coarse = D2NetVGG(output_stride=8, base_channels=WIDTH).eval()
    fine.load_state_dict(state)
    coarse.load_state_dict(state)
    return cad, fine, coarse


def close(a, b, tol=1e-4):
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


def run(cad, x, mode):
    cad.set_execution_mode(mode)
    with torch.no_grad():
        return cad(x)[0]


@pytest.mark.parametrize('output_stride', [4, 2, 1])
def test_guarantee_2_all_downsample_is_os8_and_all_keep_is_the_dilated_network(output_stride):
    x = torch.randn(1, 3, *SIZE)
    factor = 8 // output_stride
    cad, fine, coarse = pair(output_stride, dict(type='DownsampleAllMask'))
    with torch.no_grad():
        os8, = coarse(x)
        dilated, = fine(x)
    h, w = dilated.shape[2:]
    expected = os8.repeat_interleave(factor, 2).repeat_interleave(factor, 3)[:, :, :h, :w]
    for mode in ('dense', 'sparse'):
        assert close(run(cad, x, mode), expected), mode
    assert float(cad.records.executed_flops[0]) == coarse.macs(*SIZE)
    cad.mask_source = FullResolutionMask()
    for mode in ('dense', 'sparse'):
        assert close(run(cad, x, mode), dilated), mode
    assert float(cad.records.executed_flops[0]) == fine.macs(*SIZE)


def test_executed_macs_of_the_extremes_match_mmengine_flop_analyzer():
    x = torch.zeros(1, 3, 24, 40)
    cad, fine, coarse = pair(1, dict(type='DownsampleAllMask'))
    run(cad, x, 'sparse')
    counted = FlopAnalyzer(coarse, x).unsupported_ops_warnings(False).total()
    assert float(cad.records.executed_flops[0]) == counted


def independent_cell_count(levels: np.ndarray) -> int:
    """Cells of a level map: distinct (y // 2^l, x // 2^l) blocks per level."""
    count = 0
    for level in np.unique(levels):
        ys, xs = np.nonzero(levels == level)
        count += len({(y >> level, x >> level) for y, x in zip(ys, xs)})
    return count


@pytest.mark.parametrize('output_stride,seed', [(1, 0), (2, 1), (1, 2)])
def test_sparse_cells_equal_the_dense_reference_for_random_masks(output_stride, seed):
    x = torch.randn(2, 3, *SIZE)
    cad, _, _ = pair(output_stride, dict(type='RandomMask', keep_ratio=0.4, seed=seed))
    dense = run(cad, x, 'dense')
    dense_record = cad.records
    sparse = run(cad, x, 'sparse')
    assert close(sparse, dense)
    assert torch.equal(cad.records.executed_flops, dense_record.executed_flops)
    # multiply-adds from the cells: per conv, its cells x C_in x C_out x 9
    levels = torch.zeros(2, *dense.shape[2:], dtype=torch.long)
    masks = cad.mask_source(x, torch.zeros(2, 1, *dense.shape[2:]),
                            [((dense.shape[2] + 2 ** s - 1) // 2 ** s,
                              (dense.shape[3] + 2 ** s - 1) // 2 ** s)
                             for s in range(1, cad.num_steps + 1)])
    by_step = []
    for step, mask in enumerate(masks, 1):
        levels = step_levels(levels, mask, step)
        by_step.append([independent_cell_count(levels[b].numpy()) for b in range(2)])
    for block in cad.records.blocks:
        conv = getattr(cad, block.name)
        step = int(np.log2(block.grid.patch))
        expected = torch.tensor(by_step[step - 1], dtype=torch.float32) * (
            conv.in_channels * conv.out_channels * 9)
        assert torch.equal(block.executed_flops, expected), block.name


def test_max_pool_on_rows_equals_the_dense_adaptive_max_pool():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 13, 11, generator=g)
    levels = torch.zeros(2, 13, 11, dtype=torch.long)
    keep1 = torch.rand(2, 7, 6, generator=g) > 0.5
    pooled, levels1 = adaptive_downsample(x, levels, keep1, 1, 'max')
    layout1 = CellLayout.from_levels(levels1)
    keep2 = torch.rand(2, 4, 3, generator=g) > 0.6
    dense2, levels2 = adaptive_downsample(pooled, levels1, keep2, 2, 'max')
    layout2 = CellLayout.from_levels(levels2)
    rows = max_pool_rows(dense_to_rows(pooled, layout1), layout1, layout2, 2)
    assert torch.equal(rows, dense_to_rows(dense2, layout2))


def test_keypoint_mask_levels_around_given_keypoints():
    source = SiftKeypointMask(dilations=(3, 9, 17), output_stride=1, mean_bgr=(0, 0, 0))
    source.set_keypoints([np.array([[20, 28]])])
    grids = [(32 // 2 ** s, 48 // 2 ** s) for s in (1, 2, 3)]
    masks = source(torch.zeros(1, 3, 32, 48), torch.zeros(1, 64, 32, 48), grids)
    expected_boxes = [(19, 21, 27, 29), (16, 24, 24, 32), (12, 28, 20, 36)]  # dilated box
    for step, (mask, (y0, y1, x0, x1)) in enumerate(zip(masks, expected_boxes), 1):
        size = 2 ** step
        want = np.zeros(grids[step - 1], bool)
        want[y0 // size:y1 // size + 1, x0 // size:x1 // size + 1] = True
        assert np.array_equal(mask[0].numpy(), want), step


def test_cad_with_sift_keypoints_inverse_and_random_masks_on_a_real_image():
    import cv2
    from skimage import data as skdata
    from mmdyn.models.backbones import caffe_preprocess
    image = cv2.resize(skdata.astronaut(), (64, 48))
    x = caffe_preprocess(image)
    keypoint = dict(type='SiftKeypointMask', num_keypoints=16, dilations=(5, 9, 13))
    rates = {}
    for name, source in dict(keypoint=keypoint, inverse=dict(type='InverseMask', source=keypoint),
                             random=dict(type='RandomMask', keep_ratio=0.3)).items():
        cad, fine, _ = pair(1, source)
        dense = run(cad, x, 'dense')
        assert close(run(cad, x, 'sparse'), dense), name
        rates[name] = float(cad.records.executed_flops[0]) / fine.macs(48, 64)
        keep = cad.records.blocks[0].mask
        if name == 'keypoint':
            kept_keypoint = keep
        if name == 'inverse':
            assert torch.equal(keep, 1 - kept_keypoint)
    assert 0 < rates['keypoint'] < 1 and 0 < rates['inverse'] < 1 and 0 < rates['random'] < 1


def test_bad_cad_settings_are_clear_errors():
    with pytest.raises(ValueError, match='output_stride=8 is not one of'):
        CADVGG(output_stride=8)
    with pytest.raises(ValueError, match='d2net_pool3'):
        CADVGG(output_stride=4, d2net_pool3=True)
    with pytest.raises(ValueError, match='does not match CADVGG'):
        CADVGG(output_stride=2, mask_source=dict(type='SiftKeypointMask', output_stride=1))
    with pytest.raises(ValueError, match='execution_mode'):
        CADVGG(execution_mode='masked')
    with pytest.raises(ValueError, match='1 dilation.* 2 adaptive steps'):  # at build
        CADVGG(output_stride=2, mask_source=dict(type='SiftKeypointMask', dilations=(5,)))
    cad = CADVGG(output_stride=2)
    with pytest.raises(ValueError, match='list of 2 masks'):
        cad.set_masks([torch.ones(1, 4, 4)])


def test_chunked_cell_conv_equals_the_unchunked_one_and_f_conv2d():
    from mmdyn.ops import fold_conv_bn
    from mmdyn.ops.multires import conv3x3_rows, rows_to_dense
    g = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(6, 10, 3, padding=2, dilation=2)
    x = torch.randn(2, 6, 9, 11, generator=g)
    layout = CellLayout.full(2, 9, 11)
    folded = fold_conv_bn(conv, None)
    taps = layout.tap_rows(layout.positions, 2)
    rows = dense_to_rows(x, layout)
    cells = conv3x3_rows(rows, taps, folded.matrix, folded.bias, chunk_rows=7)
    assert torch.allclose(cells, conv3x3_rows(rows, taps, folded.matrix, folded.bias), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(rows_to_dense(cells, layout), conv(x), atol=1e-5)


def test_separable_dilation_equals_the_square_max_pool():
    from mmdyn.models.mask_sources.basic import dilate
    from mmdyn.models.mask_sources.sift_keypoints import separable_dilate
    pixels = torch.rand(2, 23, 31, generator=torch.Generator().manual_seed(1)) > 0.97
    for size in (1, 3, 9, 25):
        assert torch.equal(separable_dilate(pixels, size), dilate(pixels, size))


def test_forced_activation_replaces_the_mask_source_until_reset():
    """set_forced_activation works on CAD-VGG as on CAD-ResNet: every cell kept at 1,
    none at 0 (the coarse cells still compute), the configured source again at None."""
    model = CADVGG(output_stride=2, base_channels=8,
                   mask_source=dict(type='RandomMask', keep_ratio=0.5, seed=1)).eval()
    x = torch.randn(1, 3, 64, 80)
    rates = {}
    for rate in (1.0, 0.0, None):
        model.set_forced_activation(rate)
        with torch.no_grad():
            model(x)
        rates[rate] = [float(b.activation_rate.mean()) for b in model.records.blocks]
    assert all(r == 1.0 for r in rates[1.0])
    assert all(low < mid < 1.0 for low, mid in zip(rates[0.0], rates[None]))
    assert 'forced' not in ''.join(model.state_dict())
