"""SFSI analysis helpers: the dense twin, pruning, the sparse-forward profile, per-conv
rates, mask overlays and the per-block plot; the stability and pruning tools end to
end on the Cityscapes fixture."""
import json

import pytest
import torch

from e2e_helpers import ROOT, run, tiny_cityscapes_config
from mmdyn.analysis.sfsi import (PROFILE_PARTS, profile_sparse_parts,
                                 prunable_weights, prune_backbone_, pruning_study)
from mmdyn.models.backbones import SFSIResNet
from mmdyn.visualization import plot_block_rates, save_block_overlays

SMALL = dict(depth=50, base_channels=8, stem_channels=8, init_cfg=None)


pytestmark = pytest.mark.usefixtures('one_thread')


def test_dense_twin_has_the_weights_and_equals_the_all_on_network():
    torch.manual_seed(0)
    model = SFSIResNet(**SMALL).eval()
    twin = model.static_twin()
    model.set_execution_mode('sparse')
    model.set_forced_activation(1.0)
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        for a, b in zip(model(x), twin(x)):
            assert ((a - b).norm() / b.norm()).item() < 1e-4


def test_global_pruning_spares_mask_heads_and_offsets():
    torch.manual_seed(0)
    model = SFSIResNet(**SMALL, dcn=dict(type='DCNv2', deform_groups=1),
                       stage_with_dcn=(False, False, True, True))
    for name, module in model.named_modules():
        if name.endswith('conv_offset'):
            module.weight.data.normal_()
    heads = {n: p.clone() for n, p in model.named_parameters() if '_mask.' in n or 'offset' in n}
    names = {id(m) for m, _ in prunable_weights(model)}
    assert not any(id(m) in names for n, m in model.named_modules() if 'offset' in n)
    counts = prune_backbone_(model, 0.5)
    pruned = torch.cat([m.weight.detach().flatten() for m, _ in prunable_weights(model)])
    assert (pruned == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    for name, param in model.named_parameters():
        if name in heads:
            assert torch.equal(param, heads[name])
    assert counts['params'] - counts['nonzero_params'] >= pruned.numel() // 2 - 1
    with pytest.raises(ValueError, match='ratio'):
        prune_backbone_(model, 1.0)


def test_profile_sums_its_parts_and_records_feed_the_plots(tmp_path):
    torch.manual_seed(0)
    model = SFSIResNet(**SMALL).eval()
    model.set_execution_mode('sparse')
    model.set_forced_activation(0.4)
    x = torch.randn(1, 3, 64, 64)
    profile = profile_sparse_parts(model, x, repeats=1)['parts_ms']
    assert all(profile[p] > 0 for p in PROFILE_PARTS)
    assert sum(profile[p] for p in PROFILE_PARTS) <= profile['sfsi.forward']
    # per-conv rates in the summary, overlays of both sampled convs, the per-block plot
    with torch.no_grad():
        model(x)
    rates = model.sparsity_summary().block_rates
    assert set(rates) == {f'layer{s}.{k}.conv{c}' for s, n in zip(range(1, 5), (3, 4, 6, 3))
                          for k in range(n) for c in (1, 2)}
    paths = save_block_overlays(torch.zeros(64, 64, 3).byte().numpy(), model.records, 0,
                                (64, 64), str(tmp_path / 'overlays'))
    assert (tmp_path / 'overlays' / 'layer2.0.conv1.png').is_file()
    assert (tmp_path / 'overlays' / 'layer2.0.conv2.png').is_file()
    assert len(paths) == 32 + 2  # 16 blocks x 2 convs, two mosaic pages of 16 tiles
    stats = [dict(block_rates={k: float(v[0]) for k, v in rates.items()})] * 2
    means = plot_block_rates(stats, str(tmp_path / 'per_block.png'))
    assert means['layer3.1.conv2'] == pytest.approx(float(rates['layer3.1.conv2'][0]))
    assert (tmp_path / 'per_block.png').stat().st_size > 1000


@pytest.mark.slow
def test_stability_and_pruning_tools(tmp_path, monkeypatch):
    """The stability tool and the pruning study (in-process: the tool is its thin CLI)
    on a narrow SFSI DeepLabv3 (random init) and the Cityscapes fixture:
    two sampling seeds give different masks (GFLOPs) and a mean / std; pruning zeroes
    the requested share of the backbone and the model still evaluates."""
    from mmdyn.datasets import build_cityscapes_fixture
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    data = build_cityscapes_fixture(tmp_path / 'cityscapes', num_images_per_split=1,
                                    size=(64, 128))
    base = tiny_cityscapes_config(
        tmp_path / 'base.py',
        ROOT / 'configs/sfsi_resnet/deeplabv3_sfsi-r50-d8-w01_4xb2-80k_cityscapes-512x1024.py',
        data['root'])
    config = tmp_path / 'tiny.py'
    config.write_text(f"_base_ = ['{base}']\nmodel = dict(backbone=dict(base_channels=8, "
                      "stem_channels=8, mask_init_bias=0.0), decode_head=dict(in_channels=256),"
                      " auxiliary_head=dict(in_channels=128))\n")
    out = tmp_path / 'stability'
    printed = run('tools/analysis/sfsi_stability.py', config, 'none', '--seeds', '0', '1',
                  '--grid-priors', 'none', '--out-dir', out)
    assert 'backbone GFLOPs' in printed
    result = json.loads((out / 'stability.json').read_text())
    assert [s['grid_prior'] for s in result['summary']] == [None]
    runs = result['runs']
    assert [r['seed'] for r in runs] == [0, 1] and runs[0]['metric'] == 'mIoU'
    assert runs[0]['gflops'] != runs[1]['gflops']  # stochastic sampling: the seed matters
    gflops = result['summary'][0]['gflops']
    assert gflops['mean'] == pytest.approx((runs[0]['gflops'] + runs[1]['gflops']) / 2)
    assert gflops['std'] == pytest.approx(abs(runs[0]['gflops'] - runs[1]['gflops']) / 2)
    (row,) = pruning_study([('sfsi', str(config), None)], [0.6], tmp_path / 'pruning')
    assert row['ratio'] == 0.6 and row['metric'] == 'mIoU'
    assert row['backbone_nonzero_params_m'] < 0.45 * row['backbone_params_m']
    assert row['backbone_gflops'] > 0


@pytest.mark.slow
def test_config_benchmark_of_sfsi_writes_json_with_a_profile(tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    out = tmp_path / 'bench.json'
    printed = run('tools/analysis/benchmark_latency.py',
                  'configs/learning_study/sfsi-r50-w01_1xb64-20e_digits-64px.py', '--input',
                  '64', '96', '--rates', '0.4', '--warmup', '0', '--repeats', '1', '--threads',
                  '1', '--profile', '--out', out)
    (row,) = json.loads(out.read_text())['rows']
    assert 0 < row['flops_ratio'] < 1 and row['dynamic_s'] > 0
    assert set(PROFILE_PARTS) <= set(row['profile']['parts_ms'])
    assert 'ms per part' in printed
