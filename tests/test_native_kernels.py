"""The native route (mmdyn/ops/native, built by `make native`) against the pure-PyTorch
reference, both routes of the SFSI sparse path, and the fallback when the extension is
missing, stale or switched off."""
import importlib
import warnings

import pytest
import torch

from mmdyn.ops import native
from mmdyn.ops.gemm import GATHER_GEMM, SCATTER_GEMM_ACC, gather_gemm, scatter_gemm_acc
from mmdyn.ops.kernel_choice import ENV_PINS
from mmdyn.ops.patches import Window, gather_windows
from mmdyn.ops.pixel_sampling import (interpolate_dense, interpolate_rows, map_with_zero_row,
                                      sampled_pixels)
from mmdyn.ops.row_buffers import RowBuffers


def require_native():
    """The Makefile's `native` step runs before the tests: the route must be there."""
    failure = native.BUILD_FAILURE.read_text() if native.BUILD_FAILURE.exists() else None
    assert native.native_kernels() is not None, \
        f'native kernels not available (build failure: {failure}); run `make native`'


class KernelSpy:
    """The native module with its calls counted (proves which route ran)."""

    def __init__(self, module):
        self.module, self.calls = module, []

    def __getattr__(self, name):
        function = getattr(self.module, name)

        def counted(*args, **kwargs):
            self.calls.append(name)
            return function(*args, **kwargs)
        return counted


def spy_on_native(monkeypatch, route):
    """Route ``'native'`` (or a native kernel's name, ``'native_onednn'``) or
    ``'torch'`` for the ops that read native_kernels()."""
    gemm_module = importlib.import_module('mmdyn.ops.gemm')  # mmdyn.ops.gemm is a function
    pixel_sampling = importlib.import_module('mmdyn.ops.pixel_sampling')
    patches = importlib.import_module('mmdyn.ops.patches')
    is_native = route.startswith('native')
    monkeypatch.setenv(native.ENV_SWITCH, '1' if is_native else '0')
    if not is_native:
        return None
    require_native()
    spy = KernelSpy(native.native_kernels())
    for module in (pixel_sampling, gemm_module, patches):
        monkeypatch.setattr(module, 'native_kernels', lambda: spy)
    return spy


def spy_on_candidates(monkeypatch, op) -> list:
    """The names of ``op``'s (a :class:`KernelOp`) candidates as they run, in order."""
    ran = []
    for name, candidate in op.candidates.items():
        def spy(*args, _name=name, _candidate=candidate):
            ran.append(_name)
            return _candidate(*args)
        monkeypatch.setitem(op.candidates, name, spy)
    return ran


def relative_error(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize('route', ['native', 'torch'])
@pytest.mark.parametrize('shape', [(2, 5, 13, 17), (1, 64, 31, 1), (1, 3, 1, 1), (2, 40, 9, 23)])
@pytest.mark.parametrize('rate', [0.0, 0.35, 1.0])
def test_interpolation_routes_equal_the_dense_reference(route, shape, rate, monkeypatch):
    """Eq. 3 from sampled rows, each route against interpolate_dense (a 7x7 depthwise
    conv on the masked map): odd sizes, one-pixel maps, empty and full masks, the
    ``out=`` table view."""
    spy = spy_on_native(monkeypatch, route)
    batch, channels, height, width = shape
    generator = torch.Generator().manual_seed(3)
    support = (torch.rand(batch, 1, height, width, generator=generator) < rate).float()
    features = torch.randn(batch, channels, height, width, generator=generator)
    index = sampled_pixels(support)
    rows = features.permute(0, 2, 3, 1).reshape(-1, channels)[index].contiguous()
    sigma = torch.tensor(1.3)
    want = interpolate_dense(features, support, sigma, 7)
    got = interpolate_rows(rows, index, support, sigma, 7)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, want) < 1e-5 or float(want.abs().max()) == 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    view, table = map_with_zero_row(batch, channels, height, width, rows)
    assert interpolate_rows(rows, index, support, sigma, 7, out=view) is view
    torch.testing.assert_close(view, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(table[-1], torch.zeros(channels))
    assert spy is None or spy.calls == ['interpolate_sampled_rows'] * 2


@pytest.mark.parametrize('route', sorted(GATHER_GEMM.candidates))
@pytest.mark.parametrize('conv3', ['dense', 'sampled'])
def test_sfsi_sparse_path_equals_masked_on_both_routes(route, conv3, monkeypatch):
    from test_sfsi_resnet import build, run
    spy = spy_on_native(monkeypatch, route)
    monkeypatch.setenv(ENV_PINS, f'gather_gemm={route}')
    model = build(sparse_conv3=conv3)
    x = torch.randn(2, 3, 67, 83)
    masked, _ = run(model, x, 'masked')
    sparse, _ = run(model, x, 'sparse')
    for a, b in zip(sparse, masked):
        assert relative_error(a, b) < 1e-4
    if spy is not None:  # both native kernels ran (interpolation once in 'sampled')
        assert {'interpolate_sampled_rows', 'gather_gemm'} <= set(spy.calls)


def test_missing_stale_or_switched_off_kernels_fall_back_with_one_warning(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, '0')
    assert native.native_kernels() is None
    monkeypatch.setenv(native.ENV_SWITCH, '1')
    for setup, reason in [(lambda: None, 'not built'),
                          (lambda: (tmp_path / 'build-failed.txt').write_text('no g++'),
                           r'the build failed \(no g\+\+\)'),
                          (lambda: ((tmp_path / f'{native.NAME}.so').write_bytes(b'\0'),
                                    (tmp_path / 'sources.sha256').write_text('old')),
                           'stale'),
                          (lambda: (tmp_path / 'sources.sha256').write_text(
                              native.source_digest()), 'failed to load')]:
        setup()
        monkeypatch.setattr(native, 'BUILD_DIR', tmp_path)
        monkeypatch.setattr(native, 'SOURCE_STAMP', tmp_path / 'sources.sha256')
        monkeypatch.setattr(native, 'BUILD_FAILURE', tmp_path / 'build-failed.txt')
        monkeypatch.setattr(native, '_loaded', {})
        with pytest.warns(UserWarning, match=reason):
            assert native.native_kernels() is None
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # said once
            assert native.native_kernels() is None
        # the torch route still computes Eq. 3
        support = torch.ones(1, 1, 3, 4)
        rows = torch.randn(12, 2)
        out = interpolate_rows(rows, sampled_pixels(support), support, torch.tensor(2.0), 3)
        torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(-1, 2), rows)
        (tmp_path / 'build-failed.txt').unlink(missing_ok=True)


@pytest.mark.parametrize('impl', sorted(GATHER_GEMM.candidates))
@pytest.mark.parametrize('shape', [(0, 9, 8, 5), (1, 1, 3, 4), (37, 9, 16, 24), (600, 9, 64, 64),
                                   (300, 1, 256, 64), (2500, 9, 8, 5)])
@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('mode', [torch.enable_grad, torch.no_grad, torch.inference_mode])
def test_every_gather_gemm_kernel_computes_the_gathered_product(impl, shape, threads, mode,
                                                                monkeypatch):
    """bias + concat(table[taps]) @ matrix against a float64 reference, tiles crossed
    (2500 rows for oneDNN's 2048-row tiles), taps on the zero row, one-tap (1x1) and
    9-tap convs, on one thread and two (the native kernels balance their tiles over
    the threads), in every autograd mode a forward runs in: under inference mode the
    native kernel's worker threads write an inference tensor (they failed, and the
    kernel was dropped, before they took the caller's mode)."""
    monkeypatch.setenv(ENV_PINS, f'gather_gemm={impl}')
    spy = spy_on_native(monkeypatch, impl)
    rows, taps, channels, out_channels = shape
    generator = torch.Generator().manual_seed(1)
    table = torch.cat([torch.randn(50, channels, generator=generator),
                       torch.zeros(1, channels)])
    index = torch.randint(0, 51, (rows, taps), generator=generator)
    matrix = torch.randn(taps * channels, out_channels, generator=generator)
    bias = torch.randn(out_channels, generator=generator)
    want = table.double()[index].reshape(rows, taps * channels) @ matrix.double() + bias.double()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with mode():
            got = gather_gemm(table, index, matrix, bias)
    finally:
        torch.set_num_threads(before)
    assert got.shape == (rows, out_channels) and got.dtype == torch.float32
    if rows:
        assert float((got.double() - want).norm() / want.norm()) < 1e-6
    assert spy is None or spy.calls == ['gather_gemm']


@pytest.mark.parametrize('impl', sorted(GATHER_GEMM.candidates))
@pytest.mark.parametrize('threads', [1, 2])
def test_every_gather_gemm_kernel_reads_a_relud_padded_slice_in_place(impl, threads,
                                                                      monkeypatch):
    """``relu_table`` and ``zero_past_end`` against a float64 reference on a ReLU'd
    copy with a zero row appended: taps one past the table read zeros, rows are read
    through their pitch (a channel slice, 2500 rows crossing oneDNN's tiles) and the
    table is left as it was; a tap past the end without ``zero_past_end`` is an
    error on the native route."""
    monkeypatch.setenv(ENV_PINS, f'gather_gemm={impl}')
    spy = spy_on_native(monkeypatch, impl)
    generator = torch.Generator().manual_seed(2)
    wide = torch.randn(70, 13, generator=generator)
    before = wide.clone()
    table = wide[:, 2:12]  # 10 channels, rows 13 apart
    index = torch.randint(0, 71, (2500, 9), generator=generator)
    index[0] = 70
    matrix = torch.randn(90, 24, generator=generator)
    bias = torch.randn(24, generator=generator)
    padded = torch.cat([table.relu(), torch.zeros(1, 10)]).double()
    want = padded[index].reshape(2500, 90) @ matrix.double() + bias.double()
    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            got = gather_gemm(table, index, matrix, bias, relu=True, relu_table=True,
                              zero_past_end=True)
    finally:
        torch.set_num_threads(before_threads)
    assert relative_error(got.double(), want.relu()) < 1e-6
    assert torch.equal(wide, before)
    assert spy is None or spy.calls == ['gather_gemm']
    if spy is not None:
        with pytest.raises(RuntimeError, match='outside the table'):
            gather_gemm(table, index, matrix, bias)


@pytest.mark.parametrize('impl', sorted(SCATTER_GEMM_ACC.candidates))
@pytest.mark.parametrize('shape', [(0, 8, 5), (1, 3, 4), (37, 16, 24), (1300, 64, 256)])
@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('mode', [torch.enable_grad, torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize('relu, in_place, column_slice', [(True, True, False),
                                                           (False, False, False),
                                                           (True, True, True)])
def test_every_scatter_gemm_kernel_adds_the_product_onto_its_rows(impl, shape, threads, mode,
                                                                  relu, in_place, column_slice,
                                                                  monkeypatch):
    """dest[pixels] = source[pixels] + bias + rows @ matrix (ReLU'd) against a float64
    reference built by indexing, the other rows of dest untouched; tiles crossed (1300
    rows over 256-channel tiles of 2048 rows at most), one thread and two, every
    autograd mode (no tensor requires a gradient: the native kernel runs), on whole rows
    or a column slice of a wider map (a SAR group's channels)."""
    monkeypatch.setenv(ENV_PINS, f'scatter_gemm_acc={impl}')
    spy = spy_on_native(monkeypatch, impl)
    count, channels, out_channels = shape
    generator = torch.Generator().manual_seed(2)
    wide = torch.randn(3 * count + 2, 3 * out_channels, generator=generator)
    source = wide[:, out_channels:2 * out_channels] if column_slice \
        else wide[:, :out_channels].contiguous()
    dest = source if in_place else torch.randn(source.shape, generator=generator)
    untouched = wide.clone()
    pixels = torch.randperm(source.shape[0], generator=generator)[:count]
    rows = torch.randn(count, channels, generator=generator)
    matrix = torch.randn(channels, out_channels, generator=generator)
    bias = torch.randn(out_channels, generator=generator)
    want = dest.double().clone()
    sums = source.double()[pixels] + rows.double() @ matrix.double() + bias.double()
    want[pixels] = sums.relu() if relu else sums
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with mode():
            got = scatter_gemm_acc(dest, source, pixels, rows, matrix, bias, relu)
    finally:
        torch.set_num_threads(before)
    assert got is dest
    assert float((got.double() - want).abs().max()) < 1e-4 * float(want.abs().max() + 1)
    if column_slice:  # the map's other channels untouched
        assert torch.equal(wide[:, :out_channels], untouched[:, :out_channels])
        assert torch.equal(wide[:, 2 * out_channels:], untouched[:, 2 * out_channels:])
    assert spy is None or spy.calls == ['scatter_gemm_acc']


def test_scatter_gemm_records_a_graph_on_the_torch_route(monkeypatch):
    """Rows that require a gradient (a forward with gradients on) take the PyTorch
    route, whatever the pinned kernel: the native kernel writes through pointers."""
    monkeypatch.setenv(ENV_PINS, 'scatter_gemm_acc=native_onednn')
    spy = spy_on_native(monkeypatch, 'native_onednn')
    source = torch.randn(9, 3)
    rows = torch.randn(4, 2, requires_grad=True)
    matrix = torch.randn(2, 3)
    pixels = torch.tensor([7, 0, 3, 5])
    out = scatter_gemm_acc(source.clone(), source, pixels, rows, matrix, None)
    out.sum().backward()
    assert spy.calls == []
    torch.testing.assert_close(rows.grad, matrix.sum(dim=1).expand(4, 2))


def test_scatter_gemm_rejects_bad_shapes_and_indices():
    require_native()
    dest, rows, matrix = torch.randn(10, 3), torch.randn(5, 4), torch.randn(4, 3)
    with pytest.raises(ValueError, match='do not fit'):
        scatter_gemm_acc(dest, dest, torch.arange(4), rows, matrix, None)
    with pytest.raises(ValueError, match='of one shape'):
        scatter_gemm_acc(dest, torch.randn(9, 3), torch.arange(5), rows, matrix, None)
    with pytest.raises(RuntimeError, match='outside dest'):
        native.native_kernels().scatter_gemm_acc(dest, dest, torch.full((5, ), 10), rows,
                                                 matrix, None, False, 256,
                                                 matrix.t().reshape(3, 4, 1, 1))


def test_gather_gemm_rejects_bad_shapes_and_indices():
    require_native()
    table, matrix = torch.randn(10, 4), torch.randn(8, 3)
    with pytest.raises(ValueError, match='taps x channels'):
        gather_gemm(table, torch.zeros(5, 3, dtype=torch.long), matrix, None)
    with pytest.raises(RuntimeError, match='outside the table'):
        native.native_kernels().gather_gemm(table, torch.full((5, 2), 10), matrix, None,
                                            False, 256, matrix.t().reshape(3, 8, 1, 1))
    with pytest.raises(RuntimeError, match='conv_weight must be'):
        native.native_kernels().gather_gemm(table, torch.zeros(5, 2, dtype=torch.long),
                                            matrix, None, False, 256, torch.randn(3, 8))


def test_native_interpolation_rejects_unsorted_or_out_of_range_ids():
    """The native Eq. 3 walks each row's run of sorted sampled ids: ids out of order,
    repeated or outside the map are a clear error, not a wrong map."""
    require_native()
    kernels = native.native_kernels()
    rows, kernel = torch.randn(3, 4), torch.ones(3)
    out = torch.empty(2 * 5, 4)
    for bad in ([4, 2, 7], [2, 2, 7], [1, 2, 10]):
        with pytest.raises(RuntimeError, match='sorted ascending'):
            kernels.interpolate_sampled_rows(rows, torch.tensor(bad), kernel, 1e-5, out, 1, 2, 5)
    kernels.interpolate_sampled_rows(rows, torch.tensor([1, 4, 7]), kernel, 1e-5, out, 1, 2, 5)
    assert torch.equal(out[[1, 4, 7]], rows)


def padded_windows(x, index, window, relu):
    """The windows ``((step_h, step_w), (size_h, size_w), (offset_h, offset_w))`` of the
    patches ``index`` cut from ``x`` zero-padded on every side: a reference that shares
    nothing with gather_windows' row ids."""
    (step_h, step_w), (size_h, size_w), (offset_h, offset_w) = window
    pad = 2 * max(size_h, size_w, step_h, step_w)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    cuts = [padded[b, :, pad + i * step_h - offset_h:pad + i * step_h - offset_h + size_h,
                   pad + j * step_w - offset_w:pad + j * step_w - offset_w + size_w]
            for b, i, j in index.tolist()]
    out = torch.stack(cuts) if cuts else x.new_zeros(0, x.shape[1], size_h, size_w)
    return out.relu() if relu else out


@pytest.mark.parametrize('route', ['native', 'torch'])
@pytest.mark.parametrize('window', [((4, 4), (6, 6), (1, 1)), ((14, 14), (15, 15), (1, 1)),
                                    ((7, 7), (3, 9), (1, 1)), ((2, 3), (5, 4), (2, 0))],
                         ids=['s4', 's7-stride2', 'cropped', 'pairs'])
@pytest.mark.parametrize('relu', [False, True], ids=['linear', 'relu'])
@pytest.mark.parametrize('buffers', ['fresh', 'buffers', 'out'])
@pytest.mark.parametrize('channels', [24, 1])
def test_both_window_gathers_cut_the_zero_padded_windows(route, window, relu, buffers,
                                                          channels, monkeypatch):
    """Windows of every patch of odd-sized maps in a batch of two, border patches
    reaching outside the map included, equal the windows cut from the zero-padded map,
    in fresh memory, a reused buffer or given rows (``out``: a slice of a larger
    table, written in place); the native kernel ran where asked."""
    spy = spy_on_native(monkeypatch, route)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 13, 17, generator=generator).contiguous(
        memory_format=torch.channels_last)
    (step_h, step_w), size = window[0], window[1]
    # one patch row and column more than cover the map: some windows lie wholly outside
    index = torch.tensor([[b, i, j] for b in range(2) for i in range(13 // step_h + 2)
                          for j in range(17 // step_w + 2)])
    index = index[torch.randperm(index.shape[0], generator=generator)[:max(1, len(index) // 2)]]
    store = RowBuffers() if buffers == 'buffers' else None
    rows = index.shape[0] * size[0] * size[1]
    table = torch.full((rows + 5, channels), -7.0)
    out = table[2:2 + rows] if buffers == 'out' else None
    with torch.no_grad():
        for _ in range(2):  # the second gather reuses the buffer
            got = gather_windows(x, index, Window(*window), store, relu=relu, out=out)
    assert got.shape == (index.shape[0], channels, *size)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, padded_windows(x, index, window, relu))
    if out is not None:
        assert got.data_ptr() == out.data_ptr()
        assert table[:2].eq(-7).all() and table[2 + rows:].eq(-7).all()
        with pytest.raises(ValueError, match='out must be contiguous'):
            gather_windows(x, index, Window(*window), out=table[:rows - 1])
    if spy is not None:
        assert spy.calls == ['gather_windows'] * 2
    empty = gather_windows(x, index[:0], Window(*window), store, relu=relu)
    assert empty.shape == (0, channels, *size)


def test_window_gather_takes_the_torch_route_off_its_kernel(monkeypatch):
    """A channel slice (not channels-last), a float64 map and a map whose gradient is
    recorded gather through PyTorch, with the same windows (and the gradient)."""
    spy = spy_on_native(monkeypatch, 'native')
    window = ((4, 4), (6, 6), (1, 1))
    index = torch.tensor([[0, 0, 0], [0, 2, 3], [1, 1, 4]])
    base = torch.randn(2, 16, 9, 17).contiguous(memory_format=torch.channels_last)
    for x in (base[:, 4:12], base.double()):
        got = gather_windows(x, index, Window(*window), relu=True)
        assert torch.equal(got, padded_windows(x, index, window, True))
    x, reference = base.clone().requires_grad_(), base.clone().requires_grad_()
    gather_windows(x, index, Window(*window), relu=True).square().sum().backward()
    padded_windows(reference, index, window, True).square().sum().backward()
    assert torch.equal(x.grad, reference.grad)
    assert spy.calls == []


def test_native_window_gather_rejects_bad_arguments():
    require_native()
    kernels = native.native_kernels()
    rows, out = torch.randn(2 * 5 * 7, 3), torch.empty(4 * 9, 3)
    with pytest.raises(RuntimeError, match='outside the batch'):
        kernels.gather_windows(rows, torch.tensor([[2, 0, 0]] * 4), out, 5, 7, 3, 3, 3, 3,
                               1, 1, False)
    with pytest.raises(RuntimeError, match='out must be'):
        kernels.gather_windows(rows, torch.tensor([[0, 0, 0]] * 3), out, 5, 7, 3, 3, 3, 3,
                               1, 1, False)
    with pytest.raises(RuntimeError, match='index must be'):
        kernels.gather_windows(rows, torch.zeros(4, 2, dtype=torch.long), out, 5, 7, 3, 3,
                               3, 3, 1, 1, False)
