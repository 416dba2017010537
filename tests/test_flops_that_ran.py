"""Records count what really ran: ``executed_flops`` is the model's count for the masks
(the same on every route), ``flops_that_ran`` the multiply-adds the operators computed,
dense routes included; both against an operator-level count (:class:`MacCounter`).

The PyTorch products run here (``MMDYN_NATIVE=0``): the native kernels compute in C++
where the counter cannot see them (they are tested equal to the PyTorch route in
test_native_kernels.py); the FLOPs do not depend on the kernel. A LAS bottleneck's gate
runs fused into conv1 here (``conv1_gate=fused``, LAS App. B.1, the form its records
count): the other kernel pools the input, an operator the counter does not see, and
computes one logit per patch more (``C_in`` multiply-adds per patch, below 0.01 % of a
block)."""
import pytest
import torch

from mac_counter import MacCounter
from mmdyn.models.backbones import CADResNet, LASResNet, SARResNet, SFSIResNet
from mmdyn.models.backbones.las_resnet import LASBasicBlock
from mmdyn.ops import native
from mmdyn.ops.kernel_choice import ENV_PINS

pytestmark = pytest.mark.usefixtures('one_thread')

NARROW = dict(base_channels=8, stem_channels=8, init_cfg=None)
BACKBONES = {
    'las-bottleneck': lambda: LASResNet(50, granularity=[4, 4, 2, 1], **NARROW),
    'las-basic': lambda: LASResNet(18, granularity=[4, 4, 2, 1], **NARROW),
    'las-basic-sparse-conv1': lambda: LASResNet(18, granularity=[4, 4, 2, 1],
                                                basic_conv1='sparse', **NARROW),
    'sar': lambda: SARResNet(50, sar_setting='G2s2a2b1', mask_size=(4, 4, 2),
                             min_input_size=32, init_cfg=None),
}


def run_counted(model, x):
    """(operator-level MACs, records) of one forward. An unfused LAS masker's average
    pool is recorded as one multiply-add per input value (no product for the counter to
    see): added by hand."""
    pool_adds = []
    hooks = [m.masker.register_forward_pre_hook(
        lambda _, args: pool_adds.append(args[0][0].numel()))
        for m in model.modules() if isinstance(m, LASBasicBlock)]
    with torch.no_grad():
        model(x)  # kernel choices and crossovers are measured on first use
        pool_adds.clear()
        with MacCounter() as counter:
            model(x)
    for hook in hooks:
        hook.remove()
    return counter.macs + sum(pool_adds), model.records


def routes_taken(model):
    return [m.ran_densely for m in model.modules() if hasattr(m, 'ran_densely')]


@pytest.mark.parametrize('name', list(BACKBONES))
@pytest.mark.parametrize('size', [(128, 96), (118, 90)], ids=['grids-divide', 'border'])
def test_both_routes_count_what_ran(name, size, monkeypatch):
    """At 118 x 90 the patch grids do not divide the maps (LAS's 30 x 23 in 4 x 4
    patches, SAR's in cells of ceil(H / k)): border patches count and compute their
    in-map pixels only."""
    monkeypatch.setenv(native.ENV_SWITCH, '0')
    monkeypatch.setenv(ENV_PINS, 'conv1_gate=fused')
    torch.manual_seed(0)
    model = BACKBONES[name]().eval()
    model.set_execution_mode('sparse')
    model.set_forced_activation(0.5, seed=3)
    x = torch.randn(1, 3, *size)
    counted = {}
    for route in ('never', 'always'):  # the sparse executor / the dense route
        monkeypatch.setenv('MMDYN_DENSE_FALLBACK', route)
        macs, record = run_counted(model, x)
        taken = routes_taken(model)
        assert all(taken) if route == 'always' else not any(taken)
        assert float(record.flops_that_ran) == pytest.approx(macs, rel=1e-9)
        assert all((b.ran_flops is None) == (route == 'never') for b in record.blocks)
        counted[route] = macs, float(record.executed_flops)
    # the model's count does not depend on the route; the dense route computes more
    assert counted['never'][1] == counted['always'][1] == counted['never'][0]
    assert counted['always'][0] > counted['never'][0]


def test_sfsi_dense_route_counts_no_interpolation(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, '0')
    torch.manual_seed(0)
    model = SFSIResNet(50, **NARROW).eval()
    model.set_execution_mode('sparse')
    x = torch.randn(1, 3, 61, 77)
    model.set_forced_activation(1.0)  # every pixel sampled: the bottleneck itself runs
    macs, record = run_counted(model, x)
    assert all(routes_taken(model))
    assert float(record.flops_that_ran) == pytest.approx(macs, rel=1e-9)
    # executed_flops still counts the sampled network's interpolations
    assert float(record.executed_flops) > macs


def test_cad_every_cell_kept_counts_the_os8_network(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, '0')
    model = CADResNet(50, mask_source=dict(type='RandomMask'), **NARROW).eval()
    model.set_execution_mode('sparse')
    x = torch.randn(1, 3, 64, 96)
    for keep in (1.0, 0.4):
        model.set_forced_activation(keep, seed=1)
        macs, record = run_counted(model, x)
        assert float(record.flops_that_ran) == pytest.approx(macs, rel=1e-9)
        assert float(record.executed_flops) == pytest.approx(macs, rel=1e-9)
