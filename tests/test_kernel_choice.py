"""Kernels chosen by measurement: every kernel computes the same product, choices are
cached per machine, bad / stale / corrupt caches and concurrent processes are safe, and
every sparse backbone agrees with its dense reference whichever kernel is chosen."""
import copy
import json
import multiprocessing
import os
import pickle
import statistics
import time
import warnings

import pytest
import torch

from mmdyn.ops import gemm, gemm_acc
from mmdyn.ops.gemm import GEMM, GEMM_ACC, HAS_PACKED, row_class
from mmdyn.latency.machine import environment_variable, write_atomically
from mmdyn.ops.kernel_choice import ENV_PINS, KernelChooser, machine_key

IMPLS = sorted(GEMM.candidates)


def family_pins(impl: str, *ops: str) -> str:
    """``MMDYN_KERNELS`` pinning ``impl`` for ``gemm`` and the same kernel family for
    the accumulating ops (the prepacked oneDNN product accumulates only fused:
    ``conv1x1_packed`` -> ``conv1x1_add_packed``)."""
    acc = impl if impl in GEMM_ACC.candidates else impl.replace('conv1x1', 'conv1x1_add')
    return ','.join(f'{op}={impl if op == "gemm" else acc}' for op in ops)


def reference(rows, matrix, bias):
    return rows.double() @ matrix.double() + bias.double()


def assert_product(out, want):
    assert out.shape == want.shape and out.dtype == torch.float32
    if not want.numel():
        return
    assert float((out.double() - want).norm() / want.norm()) < 1e-6


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('shape', [(1, 3, 5), (37, 64, 256), (999, 2304, 67), (0, 16, 8)])
def test_every_gemm_kernel_computes_the_product(impl, shape, monkeypatch):
    monkeypatch.setenv(ENV_PINS, family_pins(impl, 'gemm', 'gemm_acc'))
    m, k, n = shape
    rows, matrix, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
    assert_product(gemm(rows, matrix, bias), reference(rows, matrix, bias))
    out = torch.randn(m, n)
    expected = reference(rows, matrix, out)
    assert gemm_acc(out, rows, matrix) is out
    assert_product(out, expected)
    # non-contiguous rows and a matrix modified in place (the cached conv weight follows)
    matrix.mul_(2)
    strided = torch.randn(k, m).t()
    assert_product(gemm(strided, matrix, bias), reference(strided, matrix, bias))


ACC_IMPLS = sorted(GEMM_ACC.candidates)


@pytest.mark.parametrize('impl', ACC_IMPLS)
@pytest.mark.parametrize('with_bias', [False, True], ids=['no-bias', 'bias'])
@pytest.mark.parametrize('relu', [False, True], ids=['linear', 'relu'])
@pytest.mark.parametrize('shape', [(37, 64, 256), (999, 2304, 67), (0, 16, 8)])
def test_every_gemm_acc_kernel_accumulates_bias_and_relu(impl, with_bias, relu, shape,
                                                         monkeypatch):
    """out = relu?(out + bias + rows @ matrix) in place, against a float64 product
    (the fused oneDNN kernel reads and writes out in one pass)."""
    monkeypatch.setenv(ENV_PINS, f'gemm_acc={impl}')
    m, k, n = shape
    rows, matrix = torch.randn(m, k), torch.randn(k, n)
    bias = torch.randn(n) if with_bias else None
    out = torch.randn(m, n)
    want = out.double() + rows.double() @ matrix.double()
    if with_bias:
        want += bias.double()
    if relu:
        want = want.clamp_min(0)
    assert gemm_acc(out, rows, matrix, bias, relu) is out
    assert_product(out, want)


@pytest.mark.parametrize('impl', ACC_IMPLS)
def test_gemm_acc_follows_the_out_dtype_and_refuses_bad_outs(impl, monkeypatch):
    monkeypatch.setenv(ENV_PINS, f'gemm_acc={impl}')
    rows, matrix, bias = torch.randn(40, 32), torch.randn(32, 16), torch.randn(16)
    out = torch.randn(40, 16).bfloat16()
    want = (out.double() + rows.double() @ matrix.double() + bias.double()).clamp_min(0)
    gemm_acc(out, rows, matrix, bias, True)
    assert out.dtype == torch.bfloat16
    assert float((out.double() - want).norm() / want.norm()) < 2e-2
    with pytest.raises(ValueError, match='contiguous'):
        gemm_acc(torch.zeros(16, 40).t(), rows, matrix)
    with pytest.raises(ValueError, match=r'\[40, 16\]'):
        gemm_acc(torch.zeros(40, 8), rows, matrix)


def test_weights_follow_the_activation_dtype():
    rows = torch.randn(40, 32).bfloat16()
    out = gemm(rows, torch.randn(32, 16), torch.randn(16))
    assert out.dtype == torch.bfloat16
    acc = torch.zeros(40, 16, dtype=torch.bfloat16)
    assert gemm_acc(acc, rows, torch.randn(32, 16)).dtype == torch.bfloat16


def fresh_chooser(tmp_path, repeats=1):
    chooser = KernelChooser(cache_dir=str(tmp_path), repeats=repeats)
    chooser.register(GEMM)
    chooser.register(GEMM_ACC)
    return chooser


def count_measurements(chooser, monkeypatch):
    calls = []
    original = chooser.measure

    def spy(op, shape_class, device='cpu'):
        calls.append((op, shape_class))
        return original(op, shape_class, device)
    monkeypatch.setattr(chooser, 'measure', spy)
    return calls


def test_choices_are_measured_once_and_reused_from_the_machine_file(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_PINS, raising=False)
    first = fresh_chooser(tmp_path)
    calls = count_measurements(first, monkeypatch)
    shape = ('float32', row_class(3000), 64, 32)
    choice = first.choose('gemm', shape)
    assert choice in IMPLS and len(calls) == 1
    assert first.choose('gemm', shape) == choice and len(calls) == 1
    content = json.loads(first.cache_file.read_text())
    assert content['machine'] == machine_key()
    assert content['choices'] == {'gemm:cpu:float32x4096x64x32': choice}
    # a new process on the same machine reads the file: no measurement
    second = fresh_chooser(tmp_path)
    calls = count_measurements(second, monkeypatch)
    assert second.choose('gemm', shape) == choice and not calls


def test_the_file_is_keyed_by_threads(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_PINS, raising=False)
    chooser = fresh_chooser(tmp_path)
    threads = torch.get_num_threads()
    path = chooser.cache_file
    try:
        torch.set_num_threads(1)
        assert chooser.cache_file != path
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('content', ['{not json', '[]', '{"machine": 1}',
                                     '{"machine": {}, "choices": {"gemm:x": "addmm"}}'])
def test_corrupt_or_stale_caches_are_measured_again_with_a_warning(tmp_path, monkeypatch,
                                                                   content):
    monkeypatch.delenv(ENV_PINS, raising=False)
    chooser = fresh_chooser(tmp_path)
    chooser.cache_file.parent.mkdir(parents=True, exist_ok=True)
    chooser.cache_file.write_text(content)
    calls = count_measurements(chooser, monkeypatch)
    with pytest.warns(RuntimeWarning, match='kernel-choice cache'):
        choice = chooser.choose('gemm_acc', ('float32', 1024, 16, 16))
    assert choice in ACC_IMPLS and len(calls) == 1  # a gemm_acc candidate
    assert json.loads(chooser.cache_file.read_text())['machine'] == machine_key()


def test_unknown_impls_in_cache_entries_are_dropped(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_PINS, raising=False)
    chooser = fresh_chooser(tmp_path)
    chooser.cache_file.parent.mkdir(parents=True, exist_ok=True)
    chooser.cache_file.write_text(json.dumps({'machine': machine_key(), 'choices': {
        'gemm:cpu:float32x1024x8x8': 'cublas', 'nosuchop:1': 'addmm'}}))
    calls = count_measurements(chooser, monkeypatch)
    assert chooser.choose('gemm', ('float32', 1024, 8, 8)) in IMPLS and len(calls) == 1


def test_pins_and_their_errors(tmp_path, monkeypatch):
    chooser = fresh_chooser(tmp_path)
    calls = count_measurements(chooser, monkeypatch)
    chooser.pin('gemm', 'conv1x1')
    assert chooser.choose('gemm', ('float32', 1024, 8, 8)) == 'conv1x1' and not calls
    chooser.pin('gemm', None)
    monkeypatch.setenv(ENV_PINS, 'gemm_acc=addmm')
    assert chooser.choose('gemm_acc', ('float32', 1024, 8, 8)) == 'addmm' and not calls
    with pytest.raises(ValueError, match="gemm='mkl' is not one of"):
        chooser.pin('gemm', 'mkl')
    with pytest.raises(ValueError, match='unknown kernel op'):
        chooser.pin('conv9', 'addmm')
    monkeypatch.setenv(ENV_PINS, 'gemm')
    with pytest.raises(ValueError, match='op=impl'):
        chooser.choose('gemm', ('float32', 1024, 8, 8))


def _choose_in_process(cache_dir, queue):
    import os

    import torch  # noqa: F811

    from mmdyn.ops.gemm import GEMM
    from mmdyn.ops.kernel_choice import KernelChooser
    os.environ.pop('MMDYN_KERNELS', None)
    torch.set_num_threads(1)
    chooser = KernelChooser(cache_dir=cache_dir, repeats=1)
    chooser.register(GEMM)
    measured = []
    original = chooser.measure
    chooser.measure = lambda op, shape, device: (measured.append(op)
                                                 or original(op, shape, device))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no corrupt-file warning may appear
        choice = chooser.choose('gemm', ('float32', 8192, 256, 256))
    queue.put((choice, len(measured)))


def test_processes_starting_at_once_measure_once_and_agree(tmp_path):
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    workers = [context.Process(target=_choose_in_process, args=(str(tmp_path), queue))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    results = [queue.get(timeout=5) for _ in workers]
    assert len({choice for choice, _ in results}) == 1
    assert sum(count for _, count in results) == 1  # the others read its result
    files = list(tmp_path.glob('kernels-*.json'))
    assert len(files) == 1 and json.loads(files[0].read_text())['choices']


# -- every sparse backbone, with each kernel, against its dense reference ---------------

def relative_error(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def _las_outputs():
    from test_las_resnet import build, run_both
    model = build(depth=50, granularity=(4, 2, 2, 1))
    model.set_forced_activation(0.4, seed=2)
    masked, sparse, _, _ = run_both(model, torch.randn(1, 3, 67, 83))
    return masked, sparse


def _sar_outputs():
    from test_sar_resnet import build, run_both
    model = build(50, groups=2)
    model.set_forced_activation(0.4, seed=2)
    outputs = run_both(model, torch.randn(1, 3, 67, 83))
    return outputs['masked'], outputs['sparse']


def _cad_outputs():
    from test_cad_resnet import cad, keep_all, run
    model = cad(16)
    x = torch.randn(1, 3, 70, 90)
    generator = torch.Generator().manual_seed(2)
    masks = [torch.rand(m.shape, generator=generator) < 0.3 for m in keep_all(model, x, True)]
    return run(model, x, 'dense', masks)[0], run(model, x, 'sparse', masks)[0]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('outputs', [_las_outputs, _sar_outputs, _cad_outputs],
                         ids=['las', 'sar', 'cad'])
def test_sparse_backbones_agree_with_their_reference_for_each_kernel(impl, outputs,
                                                                     monkeypatch):
    monkeypatch.setenv(ENV_PINS, family_pins(impl, 'gemm', 'gemm_acc', 'gemm_into'))
    reference_outputs, sparse = outputs()
    for a, b in zip(sparse, reference_outputs):
        assert a.shape == b.shape
        assert relative_error(a, b) < 1e-4


def _sfsi_outputs(conv3):
    def outputs():
        from test_sfsi_resnet import build, run
        model = build(sparse_conv3=conv3)
        model.set_forced_activation(0.4, seed=2)
        x = torch.randn(1, 3, 67, 83)
        return run(model, x, 'masked')[0], run(model, x, 'sparse')[0]
    return outputs


@pytest.mark.parametrize('impl', ACC_IMPLS)
@pytest.mark.parametrize('outputs, dense_route', [
    (_las_outputs, 'never'), (_las_outputs, 'always'), (_cad_outputs, 'never'),
    (_sfsi_outputs('dense'), 'never'), (_sfsi_outputs('sampled'), 'never')],
    ids=['las', 'las-dense-route', 'cad', 'sfsi-conv3-dense', 'sfsi-conv3-sampled'])
def test_sparse_backbones_agree_with_their_reference_for_each_accumulating_kernel(
        impl, outputs, dense_route, monkeypatch):
    """The residual sums (LAS's scatter and its dense route, CAD's and SFSI's conv3 onto
    the shortcut, ReLU fused) with each gemm_acc kernel, the other products pinned to
    addmm."""
    monkeypatch.setenv('MMDYN_DENSE_FALLBACK', dense_route)
    monkeypatch.setenv(ENV_PINS, f'gemm=addmm,gemm_into=addmm,gemm_acc={impl}')
    reference_outputs, sparse = outputs()
    for a, b in zip(sparse, reference_outputs):
        assert a.shape == b.shape
        assert relative_error(a, b) < 1e-4


# -- never slower than dense: the dense route above the measured crossover --------------

@pytest.mark.parametrize('case', [dict(depth=18), dict(depth=50),
                                  dict(depth=18, basic_conv1='sparse')],
                         ids=['r18', 'r50', 'r18-sparseconv1'])
def test_dense_route_gives_the_masked_output_and_the_masks_flops(case, monkeypatch):
    """The dense route: the masked output, and records that count the FLOPs the masks
    select (the model's FLOPs, as a metric and the paper count them), not the route's:
    the route depends on the machine's timings, a FLOPs figure must not."""
    from test_las_resnet import build, run_both
    monkeypatch.setenv('MMDYN_DENSE_FALLBACK', 'always')
    model = build(granularity=(4, 4, 2, 1), **case)
    x = torch.randn(2, 3, 75, 101)
    for rate in (0.0, 0.35, 1.0):
        model.set_forced_activation(rate, seed=1)
        masked, sparse, masked_record, sparse_record = run_both(model, x)
        for a, b in zip(sparse, masked):
            assert relative_error(a, b) < 1e-4
        blocks = model.dynamic_blocks()
        assert all(block.ran_densely == (rate > 0) for block in blocks)
        for m_block, s_block in zip(masked_record.blocks, sparse_record.blocks):
            torch.testing.assert_close(s_block.activation_rate, m_block.activation_rate)
            torch.testing.assert_close(s_block.executed_flops, m_block.executed_flops)


def block_input(model, name: str, x):
    """The input the block ``name`` receives in a forward of ``model`` on ``x``."""
    captured = {}
    block = dict(model.named_modules())[name]
    handle = block.register_forward_pre_hook(lambda _, args: captured.setdefault('x', args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return block, captured['x']


def median_block_seconds(block, x, repeats=7):
    times = []
    with torch.no_grad():
        for step in range(repeats + 1):
            start = time.perf_counter()
            block(x.clone())
            if step:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.parametrize('granularity, rate, faster', [(1, 1.0, 'dense'), (8, 0.02, 'sparse')],
                         ids=['S1-full', 'S8-sparse'])
def test_the_measured_route_is_the_faster_one(granularity, rate, faster, tmp_path,
                                              monkeypatch):
    """The route the measured crossover picks for a block is the one that runs faster
    when both routes of that block are timed directly, each forced by its policy
    (cases whose two routes differ by 1.3x or more: a LAS-18 block with its conv1 on
    the active region, at 1x1 patches and full rate, whose windows copy every pixel nine
    times, 2.2x; at 8x8 patches and 2%, 3.5x; both on the AMD EPYC of 2026-12-03); the
    crossover is stored for this device and block class."""
    from mmdyn.ops.kernel_choice import CHOOSER
    from test_las_resnet import build
    monkeypatch.setattr(CHOOSER, '_cache_dir', str(tmp_path))
    monkeypatch.setattr(CHOOSER, '_choices', {})
    monkeypatch.setattr(CHOOSER, '_loaded_key', None)
    model = build(depth=18, granularity=(granularity, ) * 4, basic_conv1='sparse')
    model.set_execution_mode('sparse')
    model.set_forced_activation(rate, seed=4)
    block, x = block_input(model, 'layer1.1', torch.randn(1, 3, 384, 480))
    seconds = {}
    for route, policy in (('sparse', 'never'), ('dense', 'always')):
        monkeypatch.setenv('MMDYN_DENSE_FALLBACK', policy)
        seconds[route] = median_block_seconds(block, x)
    slower = 'dense' if faster == 'sparse' else 'sparse'
    assert seconds[slower] > 1.3 * seconds[faster], seconds
    monkeypatch.setenv('MMDYN_DENSE_FALLBACK', 'measured')
    with torch.no_grad():
        block(x.clone())
    assert block.ran_densely == (faster == 'dense'), seconds
    stored = json.loads(CHOOSER.cache_file.read_text())['choices']
    crossover = stored[f'crossover:cpu:{block.route_class(1, block.record.grid)}']
    assert (rate > crossover) == (faster == 'dense'), (crossover, seconds)


def test_dense_fallback_policy_is_validated(monkeypatch):
    from test_las_resnet import build
    monkeypatch.setenv('MMDYN_DENSE_FALLBACK', 'sometimes')
    model = build(depth=18)
    model.set_execution_mode('sparse')
    model.set_forced_activation(0.5)
    with pytest.raises(ValueError, match="MMDYN_DENSE_FALLBACK='sometimes' is not one of"):
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))


@pytest.mark.skipif(not HAS_PACKED, reason='this torch build has no prepacked oneDNN ops')
def test_prepacked_weights_follow_the_row_count_and_do_not_travel_with_copies(monkeypatch):
    """The packed weight is rebuilt for another row count (same product), and a matrix
    carrying one still deep-copies and pickles (oneDNN tensors have no storage)."""
    monkeypatch.setenv(ENV_PINS, 'gemm=conv1x1_packed')
    matrix, bias = torch.randn(64, 96), torch.randn(96)
    for rows in (300, 17, 300):
        x = torch.randn(rows, 64)
        assert_product(gemm(x, matrix, bias), reference(x, matrix, bias))
    copied = copy.deepcopy(matrix)
    assert torch.equal(copied, matrix)
    assert torch.equal(pickle.loads(pickle.dumps(matrix)), matrix)
    x = torch.randn(40, 64)
    assert_product(gemm(x, copied, bias), reference(x, copied, bias))


@pytest.mark.skipif(not HAS_PACKED, reason='this torch build has no prepacked oneDNN ops')
def test_prepacked_weights_follow_the_thread_count():
    """oneDNN's layout for a product depends on the threads it runs on (a weight packed
    at 2 threads ran a 1-thread product at half speed): a thread count change packs
    again, the same count reuses the packing."""
    from mmdyn.ops.gemm import _packed_weight
    matrix = torch.randn(64, 96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        at_two = _packed_weight(matrix, 300)
        assert _packed_weight(matrix, 300) is at_two
        torch.set_num_threads(1)
        assert _packed_weight(matrix, 300) is not at_two
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('dense_partial, dense_full, expected', [
    (15.0, None, 0.5),     # sparse 10 + 10 r meets the dense route at r = 0.5
    (25.0, None, 1.0),     # sparse wins at every rate
    (25.0, 15.0, 0.9),     # ... except with every patch on, where the mask costs nothing
    (15.0, 12.0, 0.5),     # the partial crossover already lies lower
    (5.0, 4.0, 0.0),       # dense wins from the first patch
])
def test_crossover_arithmetic(dense_partial, dense_full, expected, monkeypatch):
    """measure_crossover from known route costs (no timing): the sparse cost is linear
    through rates 1/2 and 1; a full mask may run densely below the partial crossover."""
    from mmdyn.models.backbones import dense_fallback
    costs = {'sparse': lambda rate: 10.0 + 10.0 * rate, 'dense': dense_partial,
             'full': dense_full}
    monkeypatch.setattr(dense_fallback, 'time_call', lambda fn, device: fn())
    crossover = dense_fallback.measure_crossover(
        costs['sparse'], lambda: costs['dense'], cells=10,
        run_dense_full=None if dense_full is None else (lambda: costs['full']))
    assert crossover == pytest.approx(expected)
    # a block whose full-mask dense route is its dense block (SAR's refinement) runs a
    # full mask densely without timing that route
    never_timed = lambda: pytest.fail('the full-mask dense route was timed')  # noqa: E731
    crossover = dense_fallback.measure_crossover(
        costs['sparse'], lambda: costs['dense'], cells=10, run_dense_full=never_timed,
        full_mask_dense=True)
    assert crossover == pytest.approx(min(expected, 0.9))


def fake_clock(monkeypatch, slowdown=lambda call: 1.0):
    """Routes return their cost instead of running; ``slowdown(call)`` scales the
    ``call``-th timing (a passing slowdown of the machine). Returns the call log."""
    from mmdyn.models.backbones import dense_fallback
    calls = []

    def time_call(fn, device):
        calls.append(fn)
        return fn() * slowdown(len(calls) - 1)
    monkeypatch.setattr(dense_fallback, 'time_call', time_call)
    return calls


def test_a_passing_slowdown_does_not_move_the_crossover(monkeypatch):
    """Three consecutive timings taken three times slower, wherever they fall in the
    measurement, leave the crossover where it is: the routes are timed in alternating
    rounds, so the burst hits one run of each route, not three runs of one (timed route
    by route, a burst on the half-rate runs put a 3.5x faster sparse route of a LAS-18
    block on its dense route at 2 % activation: CI of 2026-12-05)."""
    from mmdyn.models.backbones import dense_fallback

    def crossover(slowdown):
        calls = fake_clock(monkeypatch, slowdown)
        rate = dense_fallback.measure_crossover(lambda rate: 10.0 + 10.0 * rate, lambda: 15.0,
                                                cells=10, run_dense_full=lambda: 25.0)
        return rate, len(calls)
    steady, total = crossover(lambda call: 1.0)
    assert steady == pytest.approx(0.5) and total >= 12
    for start in range(total):
        moved, _ = crossover(lambda call: 3.0 if start <= call < start + 3 else 1.0)
        assert moved == pytest.approx(0.5), (start, total)


def test_a_crossover_below_half_is_measured_not_extrapolated(monkeypatch):
    """A sparse cost that barely grows above half the patches (its line through 1/2 and
    1 lies above the dense cost at every rate) but is cheap with few patches: the
    crossover comes from one patch and 1/2, so that a sparse mask stays sparse."""
    from mmdyn.models.backbones import dense_fallback
    fake_clock(monkeypatch)
    rates = set()

    def sparse(rate):
        rates.add(rate)
        return 2.0 + 8.0 * rate if rate <= 0.5 else 6.0 + 2.0 * (rate - 0.5)
    crossover = dense_fallback.measure_crossover(sparse, lambda: 5.0, cells=10)
    assert crossover == pytest.approx(0.375)  # 2 + 8 r = 5
    assert rates == {0.1, 0.5, 1.0}
    # sparse everywhere slower than dense: no patch count runs sparsely
    assert dense_fallback.measure_crossover(sparse, lambda: 1.0, cells=10) == 0.0


def test_nearest_choice_by_hand():
    from mmdyn.ops.kernel_choice import nearest_choice
    known = {'gemm:cpu:float32x1024x64x256': 'addmm', 'gemm:cpu:float32x65536x512x128': 'conv1x1',
             'gemm:cpu:bfloat16x2048x64x256': 'conv1x1', 'gemm_acc:cpu:float32x2048x64x256': 'x',
             'crossover:cpu:LASBottleneck:64.64-S4': 0.5}
    assert nearest_choice('gemm:cpu:float32x2048x64x256', known) == 'addmm'
    assert nearest_choice('gemm:cpu:float32x32768x512x64', known) == 'conv1x1'
    assert nearest_choice('gemm:cpu:bfloat16x9x9x9', known) == 'conv1x1'  # only bf16 one
    assert nearest_choice('gather_gemm:cpu:float32x1x2x3x4', known) is None  # no such op
    assert nearest_choice('gemm:cuda.H200.sm90:float32x2048x64x256', known) is None


def test_profile_kernels_replace_timing(tmp_path, monkeypatch):
    """MMDYN_LATENCY_PROFILE with kernels: an unmeasured CPU shape class takes the
    nearest profile choice without timing, kept in memory only; a measured one keeps
    its measured choice; an op the profile lacks is measured."""
    from mmdyn.latency import Hardware, save_profile
    from mmdyn.ops import kernel_choice
    from test_latency_engine import _model
    chooser = fresh_chooser(tmp_path)
    other = next(i for i in IMPLS if i != GEMM.portable)
    hw = Hardware('cpu-test', 2, 16.0, 2.5e9, 40e9, engine=_model(),
                  kernels=(('gemm:cpu:float32x1024x64x256', other), ))
    profile = save_profile(hw, tmp_path / 'cpu-test.json')
    monkeypatch.setenv('MMDYN_LATENCY_PROFILE', str(profile))
    timed = count_measurements(chooser, monkeypatch)
    assert chooser.choose('gemm', ('float32', 2048, 64, 256)) == other and not timed
    assert chooser._from_profile == {f'{profile}|gemm:cpu:float32x2048x64x256': other}
    assert not (tmp_path / chooser.cache_file.name).exists()  # nothing written
    chooser.choose('gemm_acc', ('float32', 2048, 64, 256))  # not in the profile: timed
    assert len(timed) == 1
    monkeypatch.delenv('MMDYN_LATENCY_PROFILE')
    measured = chooser.choose('gemm', ('float32', 4096, 64, 256))
    monkeypatch.setenv('MMDYN_LATENCY_PROFILE', str(profile))
    assert chooser.choose('gemm', ('float32', 4096, 64, 256)) == measured  # measured stands
    monkeypatch.setenv('MMDYN_LATENCY_PROFILE', 'v100')
    kernel_choice.load_cpu_profile.cache_clear()
    with pytest.raises(ValueError, match='no CPU engine model'):
        chooser.choose('gemm', ('float32', 8192, 64, 256))


def test_write_atomically_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    """Kernel-choice files and latency profiles are written through one helper: the new
    text replaces the file; a failed write keeps the old file and no temporary."""
    path = tmp_path / 'choices.json'
    assert write_atomically(path, '{"a": 1}') == path
    write_atomically(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'
    with pytest.raises(TypeError):
        write_atomically(path, None)  # the write itself fails
    assert path.read_text() == '{"a": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['choices.json']


def test_environment_variable_sets_unsets_and_restores(monkeypatch):
    monkeypatch.setenv('MMDYN_TEST_SWITCH', 'user')
    with environment_variable('MMDYN_TEST_SWITCH', 'x'):
        assert os.environ['MMDYN_TEST_SWITCH'] == 'x'
    assert os.environ['MMDYN_TEST_SWITCH'] == 'user'
    with pytest.raises(RuntimeError), environment_variable('MMDYN_TEST_SWITCH', None):
        assert 'MMDYN_TEST_SWITCH' not in os.environ
        raise RuntimeError('restored even so')
    assert os.environ['MMDYN_TEST_SWITCH'] == 'user'
    monkeypatch.delenv('MMDYN_TEST_SWITCH')
    with environment_variable('MMDYN_TEST_SWITCH', 'y'):
        pass
    assert 'MMDYN_TEST_SWITCH' not in os.environ
