"""The CPU engine model of mmdyn.latency (mmdyn/latency/engine.py)."""
import itertools
import json

import numpy as np
import pytest
import torch

from mmdyn.latency import (EngineModel, Hardware, dense_route_crossover, dynamic_block_latency,
                           fit_engine,
                           hardware_from_dict, hardware_to_dict, load_profile, save_profile,
                           static_block_latency)
from mmdyn.latency import engine as E
from mmdyn.latency import sar
from mmdyn.latency.accuracy import rate_for_patches

LLC = 32 * 2 ** 20


def _model(seed=0) -> EngineModel:
    rng = np.random.default_rng(seed)
    values = {n: float(rng.uniform(0.5, 2.0)) * scale for n, scale in (
        ('sparse_call', 1e-3), ('index_element', 1e-8), ('gemm_mac', 4e-12),
        *((f'window_mac_s{s}', 4e-12 * (1 + 2 / s)) for s in E.WINDOW_SIZES),
        ('dense_call', 1e-4), ('conv1x1_mac', 4e-12), ('conv3x3_mac', 4e-12),
        ('cache_byte', 1e-11), ('dram_byte', 2e-11), ('sar_call', 5e-4),
        ('sar_group_call', 1e-4))}
    return EngineModel.from_mapping(values, LLC)


def _shapes():
    for mid, hw in ((16, (40, 60)), (32, (20, 30)), (48, (64, 48)), (96, (12, 18)),
                    (24, (200, 150))):
        yield 4 * mid, mid, 4 * mid, *hw


def _samples(model):
    samples = []
    for shape in _shapes():
        h, w = shape[3:]
        for size in E.WINDOW_SIZES:
            cells = -(-h // size) * -(-w // size)
            for patches in sorted({1, cells // 3, cells}):
                ops = E.sparse_block_ops(LLC, *shape, size, patches)
                samples.append(E.total_features(ops))
        samples.append(E.total_features(E.dense_block_ops(LLC, *shape)))
        cin, mid = shape[:2]
        samples += [E.dense_conv(LLC, cin, mid, 1, h, w).values,
                    E.dense_conv(LLC, mid, mid, 3, h, w).values,
                    E.gemm(LLC, h * w, cin, mid).values]
        for groups, k in ((2, 7), (4, 3)):  # SAR refinement blocks, both routes
            _, _, rows, cols = sar.cell_grid(h, w, k)
            for active in sorted({1, rows * cols // 3, rows * cols}):
                samples += [E.total_features(sar.refinement_ops(
                    LLC, cin, mid, cin, h, w, groups, k, [active] * groups,
                    (cin // 2, h // 2, w // 2), route)) for route in ('sparse', 'dense')]
    return [(f, model.cost(f)) for f in samples]


def test_fit_recovers_a_known_model():
    truth = _model()
    model, info = fit_engine(_samples(truth), LLC)
    assert info['rms_rel_error'] < 1e-6 and info['dropped'] == 0
    for (name, value), (_, expected) in zip(model.coefficients, truth.coefficients):
        assert value == pytest.approx(expected, rel=1e-4), name


def test_fit_drops_a_disturbed_sample():
    samples = _samples(_model(1))
    samples[5] = (samples[5][0], samples[5][1] * 5)  # another process took the CPU
    rng = np.random.default_rng(0)
    noisy = [(f, t * rng.uniform(0.97, 1.03)) for f, t in samples]
    model, info = fit_engine(noisy, LLC)
    assert info['dropped'] >= 1 and info['max_rel_error'] < 0.1
    assert model.cost(samples[5][0]) == pytest.approx(samples[5][1] / 5, rel=0.1)


def test_nonnegative_least_squares_is_the_best_feasible_subset():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.normal(size=(12, 4)), rng.normal(size=12)
        x = E.nonnegative_least_squares(a, b)
        assert (x >= 0).all()
        best = np.inf  # independent: every support, its least squares, if feasible
        for k in range(5):
            for support in itertools.combinations(range(4), k):
                z = np.zeros(4)
                if support:
                    z[list(support)] = np.linalg.lstsq(a[:, support], b, rcond=None)[0]
                if (z >= -1e-12).all():
                    best = min(best, np.sum((a @ z - b) ** 2))
        assert np.sum((a @ x - b) ** 2) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_operator_macs_match_the_blocks_record():
    """The model's multiply-adds are what mmdyn's LAS bottleneck records as executed
    (an independent count: the block's own FLOPs record), gate channel aside."""
    from mmdyn.models.backbones import LASResNet
    backbone = LASResNet(50, granularity=(4, 4, 2, 1), base_channels=16, init_cfg=None)
    backbone.prepare_for_timing()
    block = backbone.layer1[1]
    cin, mid, cout = block.conv1.in_channels, block.conv2.out_channels, block.conv3.out_channels
    x = torch.rand(1, cin, 24, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for rate in (0.25, 0.5, 1.0):
            block.forced_rate, block.forced_seed = rate, 0
            block(x.clone())
            patches = int(block.record.mask.sum())
            ops = E.sparse_block_ops(LLC, cin, mid, cout, 24, 32, 4, patches)
            feats = E.total_features(ops)
            macs = sum(v for k, v in feats.items() if k.endswith('_mac') or '_mac_' in k)
            gate = cin * 24 * 32  # the gate's output channel (a GEMM column)
            recorded = float(block.record.executed_flops) - cin * 24 * 32  # minus pooling
            assert macs - gate == pytest.approx(recorded, rel=1e-12)


def test_engine_profile_routes_and_round_trip(tmp_path):
    hw = Hardware('cpu-test', 2, 16.0, 2.5e9, 40e9, engine=_model())
    args = (hw, 256, 64, 256, 50, 76)
    static = static_block_latency(*args)
    sparse = dynamic_block_latency(*args, 4, 0.3)
    assert sparse.route == 'sparse' and static.route is None
    assert sparse.total == pytest.approx(sum(op.total for op in sparse.ops))
    for rate in (0.1, 0.5, 0.9, 1.0):
        chosen = dynamic_block_latency(*args, 4, rate, dense_route=True)
        alone = dynamic_block_latency(*args, 4, rate)
        assert chosen.total <= alone.total
        assert chosen.route == ('dense' if chosen.total < alone.total else 'sparse')
    full = dynamic_block_latency(*args, 4, 1.0, dense_route=True)
    assert full.route == 'dense'  # every patch on: the dense route is cheaper
    path = save_profile(hw, tmp_path / 'p.json')
    assert load_profile(path) == hw
    assert hardware_from_dict(hardware_to_dict(hw)) == hw


@pytest.mark.parametrize('change, match', [
    (lambda d: d['engine']['coefficients'].pop('gemm_mac'), r"missing \['gemm_mac'\]"),
    (lambda d: d['engine']['coefficients'].update(gemm_mac=-1.0), 'gemm_mac must be'),
    (lambda d: d['engine']['coefficients'].update(gemm_mac='fast'), 'gemm_mac must be'),
    (lambda d: d['engine'].update(llc_bytes=0), 'llc_bytes must be a positive int'),
    (lambda d: d['engine'].pop('llc_bytes'), "'coefficients'.*'llc_bytes'"),
    (lambda d: d.pop('frequency'), r"lacks the field\(s\) \['frequency'\]"),
    (lambda d: d.update(kernels=['gemm']), 'kernels must be a mapping'),
    (lambda d: d.update(kernels={'gemm:cpu:float32x1x1x1': 3}), 'kernels must be'),
])
def test_bad_engine_profiles_are_named(tmp_path, change, match):
    data = hardware_to_dict(Hardware('cpu-test', 2, 16.0, 2.5e9, 40e9, engine=_model()))
    change(data)
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        load_profile(path)


def test_fit_rejects_bad_samples():
    with pytest.raises(ValueError, match='at least one sample'):
        fit_engine([], LLC)
    with pytest.raises(ValueError, match='positive and finite'):
        fit_engine([({'gemm_mac': 1.0}, 0.0)], LLC)


def test_dense_route_crossover_is_where_the_route_flips():
    hw = Hardware('cpu-test', 2, 16.0, 2.5e9, 40e9, engine=_model())
    for shape, S in (((256, 64, 256, 50, 76), 4), ((512, 128, 512, 25, 38), 1),
                     ((1024, 256, 1024, 13, 19), 2)):
        crossover = dense_route_crossover(hw, *shape, S)
        h, w = shape[3:]
        cells = -(-h // S) * -(-w // S)
        for patches in range(1, cells + 1):  # brute force over every patch count
            rate = rate_for_patches(patches, h, w, S)  # exactly `patches` patches
            routes = dynamic_block_latency(hw, *shape, S, rate, dense_route=True)
            assert (routes.route == 'dense') == (patches / cells > crossover), (shape, patches)
    with pytest.raises(ValueError, match='no CPU engine model'):
        dense_route_crossover(load_profile('v100'), 256, 64, 256, 50, 76, 4)


def _fresh_kernel_cache(monkeypatch, chooser, path):
    for name, value in (('_cache_dir', str(path)), ('_choices', {}), ('_loaded_key', None),
                        ('_from_profile', {})):
        monkeypatch.setattr(chooser, name, value)


def use_profile_that_times_nothing(monkeypatch, tmp_path, calibration_forward):
    """A profile whose kernels ``calibration_forward()`` measured (in a cache of its
    own), set as MMDYN_LATENCY_PROFILE with an empty user cache; any timing of a kernel
    or a crossover from then on fails the test."""
    from mmdyn.latency.calibrate import measured_kernel_choices
    from mmdyn.models.backbones import dense_fallback
    chooser = dense_fallback.CHOOSER
    _fresh_kernel_cache(monkeypatch, chooser, tmp_path / 'calibration')
    monkeypatch.delenv('MMDYN_LATENCY_PROFILE', raising=False)
    with torch.no_grad():
        calibration_forward()
    kernels = tuple(sorted(measured_kernel_choices().items()))
    assert kernels and all(':cpu:' in e and not e.startswith('crossover') for e, _ in kernels)
    hw = Hardware('cpu-test', 2, 16.0, 2.5e9, 40e9, engine=_model(), kernels=kernels)
    _fresh_kernel_cache(monkeypatch, chooser, tmp_path / 'user')
    monkeypatch.setenv('MMDYN_LATENCY_PROFILE', str(save_profile(hw, tmp_path / 'p.json')))
    monkeypatch.setattr(dense_fallback, '_PREDICTED', {})

    def nothing_timed(*args, **kwargs):
        raise AssertionError(f'timed in the first forward: {args}')
    monkeypatch.setattr(chooser, 'measure', nothing_timed)
    monkeypatch.setattr(dense_fallback, 'measure_crossover', nothing_timed)


def test_first_forward_takes_crossovers_from_the_profile(tmp_path, monkeypatch):
    """MMDYN_LATENCY_PROFILE: the dense-route decision of every LAS bottleneck and every
    kernel choice come from the profile (nothing timed in the first forward, with an
    empty kernel cache; the profile's kernels were measured at another input size), and
    the output is the masked reference's."""
    from mmdyn.models.backbones import LASResNet, dense_fallback
    chooser = dense_fallback.CHOOSER
    torch.manual_seed(0)
    backbone = LASResNet(50, granularity=(2, 2, 1, 1), base_channels=8, init_cfg=None).eval()
    backbone.prepare_for_timing()
    backbone.set_forced_activation(0.5, seed=1)
    use_profile_that_times_nothing(monkeypatch, tmp_path,
                                   lambda: backbone(torch.rand(1, 3, 64, 96)))
    x = torch.rand(1, 3, 96, 128)
    for rate in (0.2, 0.9):
        for block in backbone.modules():
            if hasattr(block, 'forced_rate'):
                block.forced_rate, block.forced_seed = rate, 1
        with torch.no_grad():
            sparse = backbone(x)
            backbone.execution_mode = 'masked'
            reference = backbone(x)
            backbone.execution_mode = 'sparse'
        for a, b in zip(sparse, reference):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    decisions = dense_fallback.predicted_crossovers()
    assert len(decisions) >= 4 and all(0.0 <= v <= 1.0 for v in decisions.values())
    assert chooser._from_profile and not (tmp_path / 'user').exists()  # nothing stored
    monkeypatch.setenv('MMDYN_LATENCY_PROFILE', 'v100')
    dense_fallback._predicted_crossover.cache_clear()
    with pytest.raises(ValueError, match='no CPU engine model'):
        with torch.no_grad():
            backbone(x)
