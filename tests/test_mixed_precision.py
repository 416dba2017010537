"""Mixed precision: every backbone's execution modes under CPU autocast (bf16, what
mmengine's ``TestLoop(fp16=True)`` turns on without CUDA) and with bf16 or fp16 weights
stay close to float32; a model converted in place after forwards computes as a fresh
one.

Tolerance: bf16 keeps 8 significand bits (relative rounding 2^-9 = 0.2%); through 20 to
50 layers the errors add up, so the outputs are compared by relative L2 error
||y_bf16 - y_fp32|| / ||y_fp32|| < 2e-2 per output map (measured: 0.4% to 0.6% on these models, inputs and masks).
The masks are fixed (forced / seeded), so a rounding difference cannot flip a gate.
"""
import copy

import pytest
import torch

from backbone_table import BLOCK_VARIANTS, CASES

TOLERANCE = 2e-2


def relative_l2(got, want):
    return float((got.float() - want).norm() / want.norm().clamp(min=1e-12))


@pytest.fixture(scope='module', params=CASES + BLOCK_VARIANTS, ids=lambda c: c.name)
def case_model(request):
    case = request.param
    model = case.build()
    x = case.input()
    reference = {}
    for mode in case.modes:
        model.set_execution_mode(mode)
        with torch.no_grad():
            reference[mode] = [o.clone() for o in model(x)]
    return case, model, x, reference


def test_autocast_bf16_is_close_to_fp32(case_model):
    """Regression: LAS and SAR sparse inference crashed under autocast (``self and
    mat2 must have the same dtype``: folded fp32 weights met bf16 activations in an
    in-place addmm_)."""
    case, model, x, reference = case_model
    for mode in case.modes:
        model.set_execution_mode(mode)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            got = model(x)
        errors = [relative_l2(a, b) for a, b in zip(got, reference[mode])]
        assert all(a.shape == b.shape for a, b in zip(got, reference[mode]))
        print(case.name, mode, 'autocast', max(errors))
        assert max(errors) < TOLERANCE, (mode, errors)
        assert max(errors) > 1e-4, (mode, errors)  # the convs did run in bf16


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_weights_are_close_to_fp32(case_model, dtype):
    """bf16 and fp16 weights and inputs on the CPU, every execution mode."""
    case, model, x, reference = case_model
    low = copy.deepcopy(model).to(dtype)
    for mode in case.modes:
        low.set_execution_mode(mode)
        with torch.no_grad():
            got = low(x.to(dtype))
        errors = [relative_l2(a, b) for a, b in zip(got, reference[mode])]
        assert all(a.dtype == dtype for a in got)
        print(case.name, mode, dtype, 'weights', max(errors))
        assert max(errors) < TOLERANCE, (mode, errors)


@pytest.mark.parametrize('convert', ['double', 'half'])
@pytest.mark.parametrize('case', CASES + BLOCK_VARIANTS, ids=lambda c: c.name)
def test_in_place_conversion_after_a_forward_gives_a_fresh_models_outputs(case, convert):
    """``model.double()`` / ``.half()`` in place keep every Parameter's identity and
    version counter: the caches filled by the forwards before (folded weights, fused
    gates, mask-head groups, blur kernels) must not serve the converted model. Its
    outputs equal those of a model built fresh and converted, exactly (the same code on
    the same values; a stale float32 cache differs in the last bits), and stay close to
    float32."""
    dtype = getattr(torch, convert)
    x = case.input()
    model = case.build()
    float_outputs = {}
    for mode in case.modes:  # fill every cache in float32
        model.set_execution_mode(mode)
        with torch.no_grad():
            float_outputs[mode] = [o.clone() for o in model(x)]
    getattr(model, convert)()
    fresh = getattr(case.build(), convert)()
    for mode in case.modes:
        outputs = []
        for net in (model, fresh):
            net.set_execution_mode(mode)
            with torch.no_grad():
                outputs.append(net(x.to(dtype)))
        for got, want, ref in zip(*outputs, float_outputs[mode]):
            assert got.dtype == dtype
            assert torch.equal(got, want), (mode, relative_l2(got, want.float()))
            assert relative_l2(got, ref) < (1e-4 if convert == 'double' else TOLERANCE)


def test_bf16_records_count_the_same_pixels_as_fp32():
    """The FLOPs records of a bf16 model are those of float32: SFSI counted its sampled
    pixels in the masks' dtype, and bf16 cannot hold counts above 256 (the stem output
    of this input has 17 x 21 = 357 pixels)."""
    case = next(c for c in CASES if c.cls.__name__ == 'SFSIResNet')
    model = case.build()
    x = torch.randn(1, 3, 67, 83, generator=torch.Generator().manual_seed(3))
    low = copy.deepcopy(model).to(torch.bfloat16)
    for mode in case.modes:
        records = []
        for net, inputs in ((model, x), (low, x.to(torch.bfloat16))):
            net.set_execution_mode(mode)
            with torch.no_grad():
                net(inputs)
            records.append(net.records.blocks)
        for want, got in zip(*records):
            assert torch.equal(got.conv1_rate.double(), want.conv1_rate.double()), want.name
            assert torch.equal(got.executed_flops.double(), want.executed_flops.double())
