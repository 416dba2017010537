"""SFSI's pixel-level primitives (mmdyn.ops.pixel_sampling) against F.conv2d,
F.grid_sample and hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmdyn.ops.kernel_choice import ENV_PINS
from mmdyn.ops.pixel_sampling import (PixelMaskHead, SeededGenerators, apply_grid_prior,
                                      bilinear_tap_rows, logistic_noise,
                                      check_grid_prior, mask_head_logits,
                                      check_kernel_size, check_sampling_variant, conv_matrix,
                                      conv_rows, conv_tap_rows, gaussian_kernel_1d,
                                      gaussian_kernel_2d, interpolate_dense, interpolate_rows,
                                      sample_mask, sampled_pixels, with_zero_row)



pytestmark = pytest.mark.usefixtures('one_thread')

def rows_of(x):
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def test_gaussian_kernel_is_the_reference_formula_and_separable():
    sigma = torch.tensor(0.7)
    kernel = gaussian_kernel_2d(sigma, 5)
    k = 0.49
    assert kernel[2, 2].item() == pytest.approx(k / (2 * math.pi))
    assert kernel[0, 1].item() == pytest.approx(k / (2 * math.pi) * math.exp(-k / 2 * 5))
    g = gaussian_kernel_1d(sigma, 5)
    torch.testing.assert_close(torch.outer(g, g), kernel)
    torch.testing.assert_close(torch.outer(*[gaussian_kernel_1d(-sigma, 5)] * 2), kernel)


def test_interpolation_by_hand():
    """One channel, two sampled pixels: the unsampled pixels are Gaussian-weighted
    averages of the two values; the sampled ones keep theirs."""
    features = torch.arange(20.).view(1, 1, 4, 5)
    mask = torch.zeros(1, 1, 4, 5)
    mask[0, 0, 0, 0] = mask[0, 0, 3, 4] = 1
    sigma, eps = torch.tensor(0.5), 1e-5
    out = interpolate_dense(features, mask, sigma, 7, eps=eps)

    def weight(dy, dx):  # both sampled pixels lie inside every 7x7 window here
        if abs(dy) > 3 or abs(dx) > 3:
            return 0.0
        return 0.25 / (2 * math.pi) * math.exp(-0.125 * (dy * dy + dx * dx))
    for y in range(4):
        for x in range(5):
            if mask[0, 0, y, x]:
                expected = features[0, 0, y, x].item()
            else:
                w0, w1 = weight(y, x), weight(y - 3, x - 4)
                expected = (w0 * 0.0 + w1 * 19.0) / (w0 + w1 + eps)
            assert out[0, 0, y, x].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize('size', [1, 3, 7])
@pytest.mark.parametrize('rate', [0.0, 0.3, 1.0])
def test_sparse_interpolation_equals_dense(size, rate):
    torch.manual_seed(0)
    features = torch.randn(2, 6, 13, 9)
    mask = (torch.rand(2, 1, 13, 9) < rate).float()
    sigma = torch.tensor(0.8)
    reference = interpolate_dense(features, mask, sigma, size)
    index = sampled_pixels(mask)
    out = interpolate_rows(rows_of(features).index_select(0, index), index, mask, sigma, size)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('route', ['native', 'torch'])
@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('stride,dilation,groups', [(1, 1, 1), (2, 1, 1), (1, 2, 1),
                                                    (2, 1, 4), (1, 3, 2)])
def test_tap_row_conv_equals_conv2d_at_sampled_pixels(stride, dilation, groups, relu, route,
                                                      monkeypatch):
    """Tap rows (both routes: the native one-pass kernel and the PyTorch index
    arithmetic) and the conv on them, ReLU fused or not, against F.conv2d."""
    from test_native_kernels import spy_on_native
    spy = spy_on_native(monkeypatch, route)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 11, 14)
    weight, bias = torch.randn(12, 8 // groups, 3, 3), torch.randn(12)
    dense = F.conv2d(x, weight, bias, stride=stride, padding=dilation, dilation=dilation,
                     groups=groups)
    out_hw = dense.shape[2:]
    mask = (torch.rand(2, 1, *out_hw) < 0.4).float()
    index = sampled_pixels(mask)
    taps = conv_tap_rows(index, out_hw, x.shape[2:], stride, dilation, dilation,
                         zero_row=x.numel() // 8)
    out = conv_rows(with_zero_row(rows_of(x)), taps, conv_matrix(weight, groups), bias, relu)
    want = rows_of(dense).index_select(0, index)
    torch.testing.assert_close(out, want.relu() if relu else want, rtol=1e-4, atol=1e-4)
    assert spy is None or spy.calls[0] == 'conv_tap_rows'
    empty = conv_tap_rows(index[:0], out_hw, x.shape[2:], stride, dilation, dilation, 0)
    assert empty.shape == (0, 9) and empty.dtype == torch.long


def test_bilinear_taps_equal_grid_sample():
    """Zero outside the map, bilinear inside: F.grid_sample(align_corners=True)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9)
    n, taps = 40, 9
    batch = torch.randint(0, 2, (n,))
    ys = torch.rand(n, taps) * 10 - 2
    xs = torch.rand(n, taps) * 13 - 2
    ys[0, 0], xs[0, 0] = 3.0, 4.0  # integer positions too
    out = bilinear_tap_rows(with_zero_row(rows_of(x)), ys, xs, batch, 7, 9)
    grid = torch.stack([xs / 8 * 2 - 1, ys / 6 * 2 - 1], dim=-1)  # [n, taps, 2]
    reference = torch.stack([F.grid_sample(x[b:b + 1], grid[i:i + 1, None], mode='bilinear',
                                           padding_mode='zeros', align_corners=True)[0, :, 0]
                             for i, b in enumerate(batch.tolist())])       # [n, C, taps]
    torch.testing.assert_close(out, reference.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_seeded_noise_is_drawn_by_a_generator_of_the_tensors_device():
    """One generator per device, seeded once and then advancing (the blocks of a
    backbone draw in turn): on the CPU the draws of a CPU generator with that seed."""
    generators = SeededGenerators(7)
    assert generators.on('cpu') is generators.on(torch.device('cpu'))
    reference = torch.Generator().manual_seed(7)
    for _ in range(2):
        want = torch.logit(torch.rand(2, 1, 5, 6, generator=reference), eps=1e-8)
        got = logistic_noise((2, 1, 5, 6), generators, 'cpu', torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))


def test_stochastic_sampling_is_bernoulli_of_the_soft_mask_and_seeded():
    logits = torch.full((1, 1, 100, 200), 0.8)
    hard, value, soft = sample_mask(logits, 'stochastic', 0.01, False,
                                    torch.Generator().manual_seed(3))
    assert set(hard.unique().tolist()) <= {0.0, 1.0} and torch.equal(hard, value)
    assert hard.mean().item() == pytest.approx(torch.sigmoid(torch.tensor(0.8)).item(),
                                               abs=0.02)
    torch.testing.assert_close(soft, torch.sigmoid(logits))
    again = sample_mask(logits, 'stochastic', 0.01, False, torch.Generator().manual_seed(3))[0]
    other = sample_mask(logits, 'stochastic', 0.01, False, torch.Generator().manual_seed(4))[0]
    assert torch.equal(hard, again) and not torch.equal(hard, other)
    # inference thresholds logits + noise at 0; training thresholds the relaxed sample
    # sigmoid((logits + noise) / tau) at 0.5: the same draw gives the same mask
    logits = torch.randn(2, 1, 64, 80, generator=torch.Generator().manual_seed(5))
    for tau in (0.01, 1.0):
        trained = sample_mask(logits, 'stochastic', tau, True, torch.Generator().manual_seed(7))
        tested = sample_mask(logits, 'stochastic', tau, False, torch.Generator().manual_seed(7))
        assert torch.equal(trained[0].detach().round(), tested[0])


def test_deterministic_and_relu_variants():
    logits = torch.tensor([-1.0, -0.1, 0.0, 0.2, 2.0]).view(1, 1, 1, 5)
    hard, _, _ = sample_mask(logits, 'deterministic', 1.0, False)
    assert hard.view(-1).tolist() == [0, 0, 1, 1, 1]
    hard, value, soft = sample_mask(logits, 'relu', 1.0, False)
    assert hard.view(-1).tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(value.view(-1), torch.relu(torch.tanh(logits.view(-1))))
    assert torch.equal(value, soft)


def test_training_sampling_is_straight_through():
    logits = torch.randn(2, 1, 6, 6, requires_grad=True)
    hard, _, _ = sample_mask(logits, 'stochastic', 0.5, True)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    hard.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_grid_prior_forces_every_kth_pixel():
    mask = torch.zeros(2, 1, 23, 12)
    out = apply_grid_prior(mask, 11)
    assert out.sum().item() == 2 * 3 * 2
    assert out[0, 0, 22, 11] == 1 and out[0, 0, 11, 0] == 1 and out[0, 0, 1, 0] == 0
    assert apply_grid_prior(mask, None) is mask


@pytest.mark.parametrize('check,bad,name', [
    (check_grid_prior, 0, 'grid_prior_interval'), (check_grid_prior, -3, 'grid_prior'),
    (check_grid_prior, 2.5, 'grid_prior'), (check_kernel_size, 4, 'interpolation_kernel'),
    (check_kernel_size, 0, 'odd int'), (check_sampling_variant, 'gumbel', 'stochastic')])
def test_bad_settings_are_rejected_clearly(check, bad, name):
    with pytest.raises(ValueError, match=name):
        check(bad)


@pytest.mark.parametrize('route', ['native', 'torch'])
@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last],
                         ids=['nchw', 'channels-last'])
@pytest.mark.parametrize('size', [(1, 1), (2, 5), (13, 8), (7, 41), (4, 9)])
@pytest.mark.parametrize('channels', [24, 37, 80])
def test_mask_head_logits_equal_the_heads_convolutions(route, layout, size, channels,
                                                       monkeypatch):
    """Both kernels of the mask heads (the native one-pass kernel; the tap GEMM with
    shifted sums at stride 1 and the strided heads' conv), against F.conv2d with each
    head's weights: odd sizes, a 1x1 map, channels not a multiple of the kernel's
    vector width, three stride-1 heads (two passes), strides 2 and 3."""
    from test_native_kernels import spy_on_native
    spy = spy_on_native(monkeypatch, route)
    monkeypatch.setenv(ENV_PINS, f'mask_heads={route}')
    torch.manual_seed(0)
    heads = [PixelMaskHead(channels, 1), PixelMaskHead(channels, 2),
             PixelMaskHead(channels, 1), PixelMaskHead(channels, 1), PixelMaskHead(channels, 3)]
    for head in heads:
        head.weight.data.normal_()
        head.bias.data.normal_()
    x = torch.randn(2, channels, *size).contiguous(memory_format=layout)
    with torch.no_grad():
        got = mask_head_logits(x, heads)
    for head, logits in zip(heads, got):
        want = F.conv2d(x, head.weight, head.bias, stride=head.stride, padding=1)
        assert logits.shape == want.shape
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-4)
    # stride 1: two passes (two heads, then one); stride 2: one; stride 3 (no ResNet
    # has it) takes the PyTorch route
    assert spy is None or spy.calls == ['mask_head_logits'] * 3
