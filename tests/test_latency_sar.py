"""SAR-ResNet on the CPU engine model (mmdyn/latency/sar.py)."""
import pytest
import torch

from mmdyn.latency import Hardware, load_profile, predict_las_resnet
from mmdyn.latency import engine as E
from mmdyn.latency import sar
from mmdyn.ops import conv_macs

from test_latency_engine import LLC, _model


def _macs(features):
    return sum(v for k, v in features.items() if k.endswith('_mac') or '_mac_' in k)


def _hardware():
    return Hardware('cpu-test', 2, 16.0, 2.5e9, 40e9, engine=_model())


@pytest.fixture(scope='module')
def refine_block():
    """The second refinement block of stage 1 of a small SAR-ResNet-50 (sparse path,
    BatchNorm folded) and its input and guide: a 24 x 32 map, K = 4."""
    from mmdyn.models.backbones import SARResNet
    net = SARResNet(50, sar_setting='G2s2a2b1', mask_size=(4, 4, 2), base_channels=16,
                    min_input_size=96, init_cfg=None).prepare_for_timing()
    block = net.layer1.refine[1]
    torch.manual_seed(0)
    x = torch.rand(1, block.in_channels, 24, 32).contiguous(memory_format=torch.channels_last)
    guide_channels = block.selector.conv.in_channels
    guide = torch.rand(1, guide_channels, 12, 16).contiguous(memory_format=torch.channels_last)
    return block, x, guide


@pytest.mark.parametrize('route', ['sparse', 'dense'])
def test_refinement_macs_match_the_blocks_record(refine_block, route):
    """The model's multiply-adds on either route are what the block records (an
    independent count: its FLOPs record), the masker's tiny 1x1 conv aside: selected
    FLOPs for the sparse route, the whole map's for the dense route."""
    block, x, guide = refine_block
    shape = (block.in_channels, block.mid_channels, block.out_channels, 24, 32)
    groups = block.groups
    _, _, rows, cols = sar.cell_grid(24, 32, 4)  # K = 4: 4 x 4 cells of 6 x 8 pixels
    masker = rows * cols * conv_macs(4 * groups, 2 * groups, 1, groups)
    with torch.no_grad():
        for rate in (0.25, 0.5, 1.0):
            block.forced_rate, block.forced_seed = rate, 0
            block(x.clone(), guide)
            cells = [int(c) for c in block.record.mask[0].sum(dim=(1, 2))]
            ops = sar.refinement_ops(LLC, *shape, groups, 4, cells, tuple(guide.shape[1:]),
                                     route)
            recorded = block.record.executed_flops if route == 'sparse' \
                else block.record.dense_flops
            assert _macs(E.total_features(ops)) == pytest.approx(float(recorded) - masker,
                                                                 rel=1e-12)


def test_refinement_takes_the_cheaper_route():
    hw = _hardware()
    args = (hw, 256, 64, 256, 200, 304, 2, 7)
    guide = (256, 100, 152)
    for rate in (0.0, 0.2, 0.6, 1.0):
        chosen = sar.refinement_latency(*args, rate, guide)
        each = [sar.refinement_latency(*args, rate, guide, route=r) for r in ('sparse', 'dense')]
        assert chosen.total == min(b.total for b in each)
        assert chosen.route == min(each, key=lambda b: b.total).route
    lows = [sar.refinement_latency(*args, r, guide, route='sparse').total
            for r in (0.0, 0.3, 0.6, 1.0)]
    assert lows == sorted(lows)  # more cells never cost less


def test_whole_backbone():
    hw = _hardware()
    net = sar.predict_sar_resnet(hw, 50, (224, 224), 'G2s2a2b1', (7, 7, 2), 0.5)
    assert [len(s.refine) for s in net.stages] == [2, 3, 5] and len(net.plain) == 3
    assert net.static == pytest.approx(predict_las_resnet(hw, 50, (224, 224), 1, 1.0).static)
    assert net.dynamic == pytest.approx(
        sum(op.total for op in net.stem) + sum(s.total for s in net.stages)
        + sum(b.total for b in net.plain))
    rates = [sar.predict_sar_resnet(hw, 50, (224, 224), rates=r).dynamic
             for r in (0.0, 0.5, 1.0)]
    assert rates == sorted(rates)
    per_block = sar.predict_sar_resnet(hw, 50, (224, 224), rates=[0.5, [0.5, 0.5, 0.5], 0.5])
    assert per_block.dynamic == pytest.approx(net.dynamic)
    assert 'SAR-ResNet-50' in net.summary() and 'stage 3 (SAR)' in net.summary()


def test_from_config():
    cfg = dict(model=dict(backbone=dict(type='SARResNet', depth=50, sar_setting='G2s2a2b1',
                                        mask_size=(7, 7, 2))))
    hw = _hardware()
    got = sar.predict_sar_config(hw, cfg, (800, 1216), 0.3)
    assert got.dynamic == sar.predict_sar_resnet(hw, 50, (800, 1216), 'G2s2a2b1',
                                                 (7, 7, 2), 0.3).dynamic


@pytest.mark.parametrize('call, match', [
    (lambda hw: sar.predict_sar_resnet(load_profile('v100')), 'no CPU engine model'),
    (lambda hw: sar.predict_sar_resnet(hw, 18), 'bottleneck'),
    (lambda hw: sar.predict_sar_resnet(hw, setting='G2x2'), 'expected G<g>'),
    (lambda hw: sar.predict_sar_resnet(hw, setting='G2s3a2b1'), 'power of 2'),
    (lambda hw: sar.predict_sar_resnet(hw, mask_size=(7, 7)), 'mask_size'),
    (lambda hw: sar.predict_sar_resnet(hw, rates=1.5), r'\[0, 1\]'),
    (lambda hw: sar.predict_sar_resnet(hw, rates=[0.5, 0.5]), 'one entry per stage'),
    (lambda hw: sar.predict_sar_config(hw, dict(model=dict(backbone=dict(type='LASResNet')))),
     'not SARResNet'),
    (lambda hw: sar.refinement_ops(LLC, 64, 16, 64, 24, 32, 2, 4, [1], (32, 12, 16)),
     'one cell count per group'),
    (lambda hw: sar.refinement_ops(LLC, 64, 16, 64, 24, 32, 2, 4, [1, 1], (32, 12, 16),
                                   'both'), 'route must be'),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(_hardware())


def test_predict_latency_tool_on_configs(tmp_path):
    """predict_latency.py --config: a SAR and a LAS config, whole backbone per rate."""
    import json
    import runpy
    from pathlib import Path
    from mmdyn.latency import save_profile
    tools = Path(__file__).resolve().parents[1] / 'tools' / 'analysis'
    main = runpy.run_path(str(tools / 'predict_latency.py'), run_name='tool')['main']
    profile = save_profile(_hardware(), tmp_path / 'cpu-test.json')
    configs = {
        'sar': "model = dict(backbone=dict(type='SARResNet', depth=50, "
               "sar_setting='G2s2a2b1', mask_size=(7, 7, 2)))\n",
        'las': "model = dict(backbone=dict(type='LASResNet', depth=50, "
               "granularity=(4, 4, 2, 1)))\n"}
    for name, text in configs.items():
        config = tmp_path / f'{name}.py'
        config.write_text(text)
        out = tmp_path / name
        report = main(['--profile', str(profile), '--config', str(config), '--input', '224',
                       '224', '--rates', '0.3', '0.7', '--out', str(out)])
        rows = json.loads((out / 'network.json').read_text())['rows']
        assert [r['rate'] for r in rows] == [0.3, 0.7] == [r['rate'] for r in report['rows']]
        assert rows[0]['dynamic_ms'] <= rows[1]['dynamic_ms'] and rows[0]['static_ms'] > 0
    with pytest.raises(ValueError, match='no CPU engine model'):
        main(['--profile', 'v100', '--config', str(tmp_path / 'sar.py'), '--input', '224',
              '224', '--out', str(tmp_path / 'gpu')])


def test_refinement_crossover_is_where_the_route_flips():
    hw = _hardware()
    for shape in ((256, 64, 256, 50, 76, 2, 7, (256, 25, 38)),
                  (512, 128, 512, 25, 38, 4, 5, (512, 13, 19)),
                  (1024, 256, 1024, 13, 19, 2, 2, (1024, 7, 10))):
        crossover = sar.refinement_crossover(hw, *shape)
        _, _, rows, cols = sar.cell_grid(*shape[3:5], shape[6])
        for active in range(1, rows * cols + 1):  # brute force over every cell count
            routes = [E.total_features(sar.refinement_ops(LLC, *shape[:7], (active, ) * shape[5],
                                                          shape[7], route))
                      for route in ('sparse', 'dense')]
            dense_wins = hw.engine.cost(routes[1]) < hw.engine.cost(routes[0])
            assert dense_wins == (active / (rows * cols) > crossover), (shape, active)


def test_first_sar_forward_times_nothing_with_a_profile(tmp_path, monkeypatch):
    """MMDYN_LATENCY_PROFILE: every SAR refinement block's route and every kernel choice
    come from the profile (kernels measured at another size); the masked reference's
    output."""
    from mmdyn.models.backbones import SARResNet, dense_fallback
    from test_latency_engine import use_profile_that_times_nothing
    torch.manual_seed(0)
    net = SARResNet(50, sar_setting='G2s2a2b1', mask_size=(2, 2, 2), base_channels=16,
                    min_input_size=64, init_cfg=None).prepare_for_timing()
    net.set_forced_activation(0.5, seed=1)
    use_profile_that_times_nothing(monkeypatch, tmp_path, lambda: net(torch.rand(1, 3, 64, 96)))
    x = torch.rand(1, 3, 96, 128)
    for rate in (0.25, 1.0):
        net.set_forced_activation(rate, seed=1)
        with torch.no_grad():
            sparse = net(x)
            net.set_execution_mode('masked')
            reference = net(x)
            net.set_execution_mode('sparse')
        for a, b in zip(sparse, reference):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    decisions = dense_fallback.predicted_crossovers()
    assert any(k.startswith('RefineBottleneck') for k in decisions)
    dense_fallback._predicted_crossover.cache_clear()


class _Record:
    def __init__(self, name, mask):
        self.name, self.mask = name, mask


def test_rates_from_record():
    from mmdyn.latency import rates_from_record
    blocks = [_Record('layer1.refine.0', torch.tensor([[[[1., 0.], [0., 0.]]]])),
              _Record('layer1.refine.1', torch.ones(2, 2, 2, 2)),
              _Record('layer2.refine.0', torch.zeros(1, 2, 3, 3))]
    assert rates_from_record(blocks, (2, 1)) == [[0.25, 1.0], [0.0]]
    with pytest.raises(ValueError, match='no block for stage 2 block 1'):
        rates_from_record(blocks, (2, 2))
    with pytest.raises(ValueError, match='does not fit the layout'):
        rates_from_record(blocks + [_Record('layer3.0', torch.ones(1, 1, 1, 1))], (2, 1))
    hw = _hardware()  # recorded per-block rates feed both network predictors
    per_block = sar.predict_sar_resnet(hw, 50, (224, 224), rates=[[0.5, 0.5], [0.5] * 3,
                                                                  [0.5] * 5])
    assert per_block.dynamic == sar.predict_sar_resnet(hw, 50, (224, 224), rates=0.5).dynamic


@pytest.mark.slow
def test_predict_latency_from_a_recorded_forward(tmp_path):
    """predict_latency.py --config --from-forward: the model's own masks on a photo."""
    import json
    import runpy
    from pathlib import Path
    from mmdyn.latency import save_profile
    root = Path(__file__).resolve().parents[1]
    main = runpy.run_path(str(root / 'tools' / 'analysis' / 'predict_latency.py'),
                          run_name='tool')['main']
    profile = save_profile(_hardware(), tmp_path / 'cpu-test.json')
    config = root / 'configs' / 'sar_resnet' / 'faster-rcnn_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py'
    main(['--profile', str(profile), '--config', str(config), '--input', '224', '224',
          '--from-forward', '--image', 'astronaut', '--out', str(tmp_path)])
    rows = json.loads((tmp_path / 'network.json').read_text())['rows']
    assert len(rows) == 1 and [len(stage) for stage in rows[0]['rate']] == [2, 3, 5]
    assert all(0.0 <= r <= 1.0 for stage in rows[0]['rate'] for r in stage)
