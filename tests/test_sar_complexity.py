"""SAR-ResNet complexity: dense ResNet FLOPs, SAR's own FLOP records against
mmengine's counter, rate monotonicity, and the table tool."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from mmdet.models.backbones import ResNet
from mmengine.analysis import FlopAnalyzer

from mmdyn.analysis.complexity import (count_parameters, format_table, resnet_flops,
                              sar_complexity)
from mmdyn.models.backbones import SARResNet

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'analysis' / 'sar_complexity.py'


def counted(model, x):
    """mmengine's per-part counts of the operators SAR's records model (conv and
    linear; batch norm, pooling and upsampling are outside mmdyn's FLOP convention)."""
    analyzer = FlopAnalyzer(model, (x,))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    per_module = analyzer.by_module_and_operator()
    return {name: per_module[name].get('conv', 0) + per_module[name].get('linear', 0)
            for name in ('', 'conv1', 'layer1', 'layer2', 'layer3', 'layer4')}


def test_resnet_flops_equal_mmengine_conv_count():
    model = ResNet(18, init_cfg=None)
    model.eval()
    x = torch.zeros(1, 3, 64, 64)
    assert resnet_flops(model, (64, 64)) == FlopAnalyzer(model, (x,)).by_operator()['conv']


@pytest.mark.parametrize('depth,setting,size', [(18, 'G2s2a2b1', (64, 96)),
                                                (50, 'G4s4a2b1', (64, 64))])
def test_sar_records_equal_mmengine_conv_linear_count(depth, setting, size):
    """Full learned masks (selectors run, bias 10 keeps every cell on in eval): the
    backbone's own dense and executed FLOPs equal what mmengine counts in masked mode,
    part by part."""
    torch.manual_seed(0)
    model = SARResNet(depth, sar_setting=setting, mask_size=(2, 2, 2),
                      min_input_size=min(size), mask_init_bias=10.0,
                      execution_mode='masked', init_cfg=None)
    model.eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        model(x)
    record = model.records
    assert all(bool(b.activation_rate.eq(1).all()) for b in record.blocks)
    counts = counted(model, x)
    ours = dict(record.static_flops)
    ours['conv1'] = ours.pop('stem')
    for block in record.blocks:
        ours[block.name.split('.')[0]] += block.dense_flops
    assert {k: ours[k] for k in sorted(ours)} == {k: counts[k] for k in sorted(ours)}
    assert record.dense_flops == counts['']
    assert float(record.executed_flops[0]) == counts['']


def test_flops_decrease_with_rate_and_params_do_not_depend_on_it():
    rates = (1.0, 0.75, 0.5, 0.25, 0.0)
    result = sar_complexity(18, 'G2s2a2b1', (64, 64), rates=rates, mask_size=(2, 2, 2))
    flops = [result['sar']['flops'][str(r)] for r in rates]
    assert all(a > b for a, b in zip(flops, flops[1:]))
    assert flops[0] == result['sar']['dense_flops']
    assert result['sar']['activation_rate'] == {str(r): r for r in rates}
    again = sar_complexity(18, 'G2s2a2b1', (64, 64), rates=(0.5,), mask_size=(2, 2, 2))
    assert again['sar']['params'] == result['sar']['params']
    assert again['sar']['flops']['0.5'] == result['sar']['flops']['0.5']
    model = SARResNet(18, sar_setting='G2s2a2b1', mask_size=(2, 2, 2), min_input_size=64,
                      init_cfg=None)
    assert result['sar']['params'] == count_parameters(model)
    assert result['resnet']['params'] == count_parameters(ResNet(18, init_cfg=None))
    assert result['ratios']['flops']['0.5'] == pytest.approx(
        result['sar']['flops']['0.5'] / result['resnet']['flops'])


def test_classifier_adds_the_same_head_to_both_models():
    plain = sar_complexity(18, 'G2s4a1', (64, 64), rates=(1.0, 0.5), mask_size=(2, 2, 2))
    head = sar_complexity(18, 'G2s4a1', (64, 64), rates=(1.0, 0.5), mask_size=(2, 2, 2),
                          classifier=1000)
    for model in ('sar', 'resnet'):
        assert head[model]['params'] - plain[model]['params'] == 512 * 1000 + 1000
    assert head['resnet']['flops'] - plain['resnet']['flops'] == 512 * 1000
    for rate in ('1.0', '0.5'):
        assert head['sar']['flops'][rate] - plain['sar']['flops'][rate] == 512 * 1000
    table = format_table([plain, head]).splitlines()
    assert table[0].startswith('| model | setting | input | params (M) | GFLOPs r=1 |')
    assert len(table) == 2 + 4  # a ResNet row and a SAR row per (input, head)
    assert len(format_table([plain, head, plain]).splitlines()) == 2 + 4 + 1
    assert '64x64 + fc1000' in table[4] and '64x64 + fc1000' not in table[2]


def test_cli_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('sar_complexity_tool', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'complexity.json'
    tool.main(['--inputs', '64x64', '--depths', '18', '--settings', 'G2s2a2b1',
               '--mask-size', '2', '2', '2', '--threads', '1', '--out', str(out)])
    printed = capsys.readouterr().out
    assert '| ResNet-18 | - | 64x64 |' in printed and '| SAR-ResNet-18 | G2s2a2b1 |' in printed
    report = json.loads(out.read_text())
    assert {'config', 'caption', 'table', 'rows'} <= set(report)
    (row,) = report['rows']
    assert {'depth', 'setting', 'input', 'classifier', 'rates', 'sar', 'resnet',
            'ratios'} <= set(row)
    assert row['classifier'] is None and row['input'] == [64, 64]
    assert set(row['sar']['gflops']) == {'1.0', '0.5', '0.3'}
    assert {'params', 'flops', 'gflops'} <= set(row['resnet'])
    assert set(row['ratios']['flops']) == {'1.0', '0.5', '0.3'}
