"""Device-aware kernel choice: CPU-only kernels (oneDNN's internal ops, the native C++
kernels) are never chosen for a tensor on another device, nothing is timed where
nothing can be, a kernel that fails is dropped with one warning (the forward still
gives the reference output), and missing oneDNN ops leave a working engine."""
import importlib
import warnings

import pytest
import torch

from mmdyn.ops import native
from mmdyn.ops.gemm import (GATHER_GEMM, GEMM, GEMM_ACC, GEMM_INTO, gather_gemm, gemm,
                            gemm_acc, gemm_into, onednn_candidates)
from mmdyn.ops.kernel_choice import (ANYWHERE, CHOOSER, CPU_FLOAT32, ENV_PINS, KernelChooser,
                                     KernelOp)
from mmdyn.ops.pixel_sampling import MASK_HEADS, PixelMaskHead, mask_head_logits

ENGINE_OPS = [GEMM, GEMM_ACC, GEMM_INTO, GATHER_GEMM, MASK_HEADS]
gemm_module = importlib.import_module('mmdyn.ops.gemm')  # mmdyn.ops.gemm is also a function


@pytest.fixture
def fresh_engine(tmp_path, monkeypatch):
    """The process-wide chooser with no choice made yet, measuring into ``tmp_path``."""
    monkeypatch.delenv(ENV_PINS, raising=False)
    monkeypatch.setattr(CHOOSER, '_cache_dir', str(tmp_path))
    monkeypatch.setattr(CHOOSER, '_choices', {})
    monkeypatch.setattr(CHOOSER, '_loaded_key', None)
    monkeypatch.setattr(CHOOSER, '_warned', set())
    monkeypatch.setattr(CHOOSER, '_failed', set())
    monkeypatch.setattr(CHOOSER, 'pins', {})
    return CHOOSER


def spy_candidates(monkeypatch):
    """Record every candidate call of every engine op: ``[(op, impl)]``."""
    calls = []
    for op in ENGINE_OPS:
        for name, fn in list(op.candidates.items()):
            def spy(*args, _fn=fn, _key=(op.name, name)):
                calls.append(_key)
                return _fn(*args)
            monkeypatch.setitem(op.candidates, name, spy)
    return calls


def test_cpu_only_candidates_serve_float32_cpu_tensors_only():
    cuda, cpu = torch.device('cuda'), torch.device('cpu')
    for op in ENGINE_OPS:
        assert op.serves.get(op.portable, ANYWHERE) is ANYWHERE
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            on_cuda = op.eligible(cuda, dtype)
            assert on_cuda[0] == op.portable
            assert not any(op.serves.get(n) is CPU_FLOAT32 for n in on_cuda), (op.name, dtype)
        for name in ('native', 'native_onednn', 'native_onednn_packed', 'conv1x1_packed',
                     'conv1x1_add', 'conv1x1_add_packed'):
            if name in op.candidates:
                assert op.serves[name] is CPU_FLOAT32
                assert name in op.eligible(cpu, torch.float32)
                assert name not in op.eligible(cpu, torch.bfloat16)
    # float16 on the CPU: only MKL's product (the 1x1 convolution would time the same
    # code path at great cost): nothing to measure
    assert GEMM.eligible(cpu, torch.float16) == ['addmm']
    assert GATHER_GEMM.eligible(cpu, torch.float16) == ['torch']


def test_meta_tensors_take_the_portable_kernels_and_time_nothing(fresh_engine, monkeypatch):
    """A device where nothing can be timed: every engine op runs its device-generic
    candidate, and no measurement starts."""
    measured = []
    monkeypatch.setattr(fresh_engine, 'measure', lambda *a, **k: measured.append(a))
    calls = spy_candidates(monkeypatch)
    meta = dict(device='meta')
    rows, matrix, bias = torch.randn(300, 64, **meta), torch.randn(64, 32, **meta), \
        torch.randn(32, **meta)
    assert gemm(rows, matrix, bias).device.type == 'meta'
    out = torch.zeros(300, 32, **meta)
    gemm_acc(out, rows, matrix, bias, relu=True)
    gemm_into(out, rows, matrix, bias, relu=True)
    table, taps = torch.randn(500, 16, **meta), torch.zeros(300, 9, dtype=torch.long, **meta)
    assert gather_gemm(table, taps, torch.randn(144, 32, **meta), None).shape == (300, 32)
    heads = [PixelMaskHead(16), PixelMaskHead(16, stride=2)]
    x = torch.randn(1, 16, 20, 30, **meta).contiguous(memory_format=torch.channels_last)
    logits = mask_head_logits(x, [h.to('meta') for h in heads])
    assert [tuple(l.shape) for l in logits] == [(1, 1, 20, 30), (1, 1, 10, 15)]
    assert not measured
    portable = {op.name: op.portable for op in ENGINE_OPS}
    assert sorted(set(calls)) == sorted({(op, portable[op]) for op, _ in calls})
    assert {op for op, _ in calls} == set(portable)


def test_a_pin_to_a_cpu_only_kernel_does_not_reach_another_device(monkeypatch):
    monkeypatch.setenv(ENV_PINS, 'gemm=conv1x1_packed,gather_gemm=native_onednn')
    assert CHOOSER.choose('gemm', ('float32', 1024, 8, 8), 'meta') == 'addmm'
    assert CHOOSER.choose('gather_gemm', ('float32', 1024, 72, 8, 9), 'meta') == 'torch'
    if 'conv1x1_packed' in GEMM.candidates:
        assert CHOOSER.choose('gemm', ('float32', 1024, 8, 8), 'cpu') == 'conv1x1_packed'


@pytest.mark.skipif(native.native_kernels() is None, reason='native kernels not built')
def test_native_kernels_refuse_tensors_of_another_device():
    kernels = native.native_kernels()
    meta = torch.device('meta')
    with pytest.raises(RuntimeError, match='CPU tensors only'):
        kernels.gather_gemm(torch.randn(10, 4, device=meta),
                            torch.zeros(5, 2, dtype=torch.long, device=meta),
                            torch.randn(8, 3, device=meta), None, False, 256,
                            torch.randn(3, 8, 1, 1, device=meta))
    with pytest.raises(RuntimeError, match='CPU tensors only'):
        kernels.conv_tap_rows(torch.zeros(4, dtype=torch.long, device=meta), 4, 4, 4, 4, 1, 1,
                              1, 16, 3)
    with pytest.raises(RuntimeError, match='CPU tensors only'):
        kernels.mask_head_logits(torch.randn(12, 4, device=meta), torch.randn(1, 9, 4),
                                 torch.zeros(1), 1, 3, 4, 1)


def _raising(*args, **kwargs):
    raise RuntimeError('simulated: this kernel is unavailable in this build')


def test_a_raising_candidate_is_dropped_with_one_warning(tmp_path, monkeypatch):
    op = KernelOp('product', {'mm': lambda a, b: a @ b, 'broken': _raising},
                  lambda shape: (torch.randn(shape[1], 8), torch.randn(8, 4)))
    chooser = KernelChooser(cache_dir=str(tmp_path), repeats=1)
    chooser.register(op)
    with pytest.warns(RuntimeWarning, match=r'product=broken failed on cpu \(RuntimeError'):
        assert chooser.choose('product', ('float32', 16)) == 'mm'
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the failed kernel is not timed or warned again
        assert chooser.choose('product', ('float32', 64)) == 'mm'
    failing_portable = KernelOp('broken_op', {'broken': _raising, 'mm': lambda a, b: a @ b},
                                lambda shape: (torch.randn(4, 8), torch.randn(8, 4)))
    chooser.register(failing_portable)
    with pytest.raises(RuntimeError, match='simulated'):  # nothing to fall back to
        chooser.choose('broken_op', ('float32', 16))


def reference_and_model(family: str):
    """A sparse model of ``family`` (LAS: products and residual sums; SFSI: gathered
    3x3 products and mask heads) with its masked reference outputs."""
    from backbone_table import CASES
    if family == 'las':
        from test_las_resnet import build
        model = build(depth=50, granularity=(4, 2, 2, 1))
        model.set_forced_activation(0.4, seed=2)
        x = torch.randn(1, 3, 67, 83, generator=torch.Generator().manual_seed(0))
    else:
        case = next(c for c in CASES if c.name.startswith(family))
        model, x = case.build(), case.input()
    model.set_execution_mode('masked')
    with torch.no_grad():
        reference = [o.clone() for o in model(x)]
    model.set_execution_mode('sparse')
    return model, x, reference


def assert_close_to(got, reference):
    for a, b in zip(got, reference):
        assert float((a - b).norm() / b.norm()) < 1e-4


@pytest.mark.parametrize('op, name, family', [
    (GEMM, 'conv1x1', 'las'), (GEMM_ACC, 'conv1x1', 'las'),
    (GATHER_GEMM, 'native_onednn', 'sfsi'), (MASK_HEADS, 'native', 'sfsi')])
def test_a_failing_kernel_never_fails_the_forward(op, name, family, fresh_engine, tmp_path,
                                                  monkeypatch):
    """One kernel raising when timed (a changed oneDNN schema, a native kernel built
    against another torch): the forward gives the reference output, with one warning
    naming the kernel."""
    monkeypatch.setenv('MMDYN_DENSE_FALLBACK', 'never')  # every product of the sparse route
    model, x, reference = reference_and_model(family)
    monkeypatch.setattr(fresh_engine, '_cache_dir', str(tmp_path / 'broken'))
    monkeypatch.setattr(fresh_engine, '_choices', {})  # measure again, with the
    monkeypatch.setattr(fresh_engine, '_loaded_key', None)  # broken kernel
    monkeypatch.setitem(op.candidates, name, _raising)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with torch.no_grad():
            got = model(x)
    assert_close_to(got, reference)
    assert any(entry.startswith(f'{op.name}:cpu:') for entry in fresh_engine._choices)
    messages = [str(w.message) for w in caught if 'failed on cpu' in str(w.message)]
    assert len(messages) == 1 and f'{op.name}={name}' in messages[0], messages


def test_missing_onednn_internal_ops_leave_a_working_engine(fresh_engine, monkeypatch):
    """Each internal oneDNN op missing (a torch build without the inductor ops, or one
    whose op computes wrong): the probe drops exactly the candidates that need it, and
    a forward on what is left gives the reference output."""
    model, x, reference = reference_and_model('las')
    full = [set(table) for table in onednn_candidates()]
    for missing in ('_POINTWISE', '_CONV_ADD_', '_REORDER'):
        with monkeypatch.context() as patch:
            patch.setattr(gemm_module, missing, None)
            tables = onednn_candidates()
            for table in tables:
                assert {'addmm', 'conv1x1'} <= set(table)
            packed = [n for t in tables for n in t if n.endswith('packed')]
            added = [n for t in tables for n in t if n.startswith('conv1x1_add')]
            assert not packed or missing == '_CONV_ADD_'
            assert not added or missing != '_CONV_ADD_'
            for op, table in zip((GEMM, GEMM_ACC, GEMM_INTO), tables):
                patch.setattr(op, 'candidates', table)
            patch.setattr(fresh_engine, '_choices', {})
            with torch.no_grad():
                assert_close_to(model(x), reference)
    wrong = onednn_candidates(has_op=lambda op, packed=False: False)
    assert [set(t) for t in wrong] == [{'addmm', 'conv1x1'}] * 3
    assert all(set(t) >= w for t, w in zip(full, [{'addmm', 'conv1x1'}] * 3))
