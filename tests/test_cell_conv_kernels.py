"""The products written in place (``gemm_into``, every measured kernel) and the cell
convolution built on them: each kernel against a float64 product and the cell conv
against ``F.conv2d`` on the filled map (odd sizes, full / empty / mixed level maps,
chunked or not, ReLU fused or not); the zero row shared between convs; CAD-VGG sparse
== dense whichever kernel is chosen."""
import pytest
import torch
import torch.nn.functional as F

from mmdyn.ops import fold_conv_bn, gemm_into
from mmdyn.ops.gemm import GEMM_INTO
from mmdyn.ops.kernel_choice import ENV_PINS
from mmdyn.ops.multires import (CellLayout, conv3x3_rows, dense_to_rows, fill_cells,
                                new_rows, step_levels, zero_padded)

pytestmark = pytest.mark.usefixtures('one_thread')

INTO_IMPLS = sorted(GEMM_INTO.candidates)


def reference(rows, matrix, bias, relu):
    out = rows.double() @ matrix.double()
    out = out if bias is None else out + bias.double()
    return out.clamp_min(0) if relu else out


@pytest.mark.parametrize('impl', INTO_IMPLS)
@pytest.mark.parametrize('shape', [(1, 3, 5), (37, 64, 130), (301, 576, 24), (0, 16, 8)])
@pytest.mark.parametrize('relu,with_bias', [(False, True), (True, True), (True, False)])
def test_every_gemm_into_kernel_writes_the_product_into_its_slice(impl, shape, relu,
                                                                  with_bias, monkeypatch):
    monkeypatch.setenv(ENV_PINS, f'gemm_into={impl}')
    m, k, n = shape
    g = torch.Generator().manual_seed(m + k)
    rows, matrix = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    bias = torch.randn(n, generator=g) if with_bias else None
    buffer = torch.full((m + 4, n), 7.0)
    out = buffer[2:2 + m]  # a row slice: the rows around it stay untouched
    assert gemm_into(out, rows, matrix, bias, relu) is out
    want = reference(rows, matrix, bias, relu)
    if m:
        assert float((out.double() - want).norm() / want.norm()) < 1e-6
    assert torch.equal(buffer[:2], torch.full((2, n), 7.0))
    assert torch.equal(buffer[2 + m:], torch.full((2, n), 7.0))


@pytest.mark.parametrize('impl', INTO_IMPLS)
def test_gemm_into_follows_the_out_dtype_and_refuses_bad_outs(impl, monkeypatch):
    monkeypatch.setenv(ENV_PINS, f'gemm_into={impl}')
    rows, matrix, bias = torch.randn(40, 32), torch.randn(32, 16), torch.randn(16)
    out = torch.empty(40, 16, dtype=torch.bfloat16)
    gemm_into(out, rows.bfloat16(), matrix, bias, True)
    want = reference(rows.bfloat16().float(), matrix, bias, True)
    assert float((out.double() - want).abs().max()) < 0.05 * float(want.abs().max())
    with pytest.raises(ValueError, match='contiguous'):
        gemm_into(torch.empty(16, 40).t(), rows, matrix, bias)
    with pytest.raises(ValueError, match=r'\[40, 16\]'):
        gemm_into(torch.empty(39, 16), rows, matrix, bias)


def test_zero_padded_is_a_view_of_new_rows_and_a_copy_otherwise():
    rows = new_rows(5, 3, torch.empty(0))
    rows.copy_(torch.arange(15.).view(5, 3))
    padded = zero_padded(rows)
    assert padded.data_ptr() == rows.data_ptr() and padded.shape == (6, 3)
    assert torch.equal(padded[5], torch.zeros(3)) and torch.equal(padded[:5], rows)
    rows.as_strided((6, 3), (3, 1))[5, 1] = 1.0  # the row after is no longer zero
    copied = zero_padded(rows)
    assert copied.data_ptr() != rows.data_ptr() and torch.equal(copied[5], torch.zeros(3))
    plain = torch.randn(4, 2)
    copied = zero_padded(plain)
    assert torch.equal(copied[:4], plain) and torch.equal(copied[4], torch.zeros(2))
    assert zero_padded(plain[1:]).shape == (4, 2)  # an offset view: a copy
    assert zero_padded(torch.randn(6, 2)[:0]).shape == (1, 2)


def level_map(kind: str, height: int, width: int, generator):
    """Full resolution, every block downsampled three times (no level-0 cell), or a
    random quadtree."""
    levels = torch.zeros(2, height, width, dtype=torch.long)
    if kind == 'full':
        return levels
    for step in (1, 2, 3):
        rows, cols = -(-height // 2 ** step), -(-width // 2 ** step)
        keep = (torch.zeros(2, rows, cols, dtype=torch.bool) if kind == 'empty'
                else torch.rand(2, rows, cols, generator=generator) < 0.4)
        levels = step_levels(levels, keep, step)
    return levels


@pytest.mark.parametrize('impl', INTO_IMPLS)
@pytest.mark.parametrize('kind', ['full', 'empty', 'mixed'])
@pytest.mark.parametrize('size,dilation', [((13, 7), 1), ((9, 11), 2), ((19, 17), 4)])
def test_cell_conv_equals_f_conv2d_on_the_filled_map_for_each_kernel(impl, kind, size,
                                                                     dilation, monkeypatch):
    monkeypatch.setenv(ENV_PINS, f'gemm_into={impl}')
    g = torch.Generator().manual_seed(dilation)
    layout = CellLayout.from_levels(level_map(kind, *size, g))
    conv = torch.nn.Conv2d(6, 10, 3, padding=dilation, dilation=dilation)
    folded = fold_conv_bn(conv, None)
    filled = fill_cells(torch.randn(2, 6, *size, generator=g), layout)
    taps = layout.tap_rows(layout.positions, dilation)
    with torch.no_grad():
        want = dense_to_rows(conv(filled), layout)
    rows = dense_to_rows(filled, layout)
    for chunk_rows in (7, 16384):
        plain = conv3x3_rows(rows, taps, folded.matrix, folded.bias, chunk_rows)
        assert torch.allclose(plain, want, atol=1e-5)
        # fused ReLU, from rows that carry the zero row (the chained-conv case)
        chained = new_rows(*rows.shape, rows)
        chained.copy_(rows)
        fused = conv3x3_rows(chained, taps, folded.matrix, folded.bias, chunk_rows, relu=True)
        assert torch.allclose(fused, want.clamp_min(0), atol=1e-5)
        assert not zero_padded(fused)[-1].any() and zero_padded(fused).data_ptr() == \
            fused.data_ptr()


@pytest.mark.parametrize('impl', INTO_IMPLS)
def test_cad_vgg_sparse_equals_dense_for_each_kernel(impl, monkeypatch):
    from test_cad_vgg import SIZE, close, pair, run
    monkeypatch.setenv(ENV_PINS, f'gemm_into={impl}')
    x = torch.randn(1, 3, *SIZE)
    cad, _, _ = pair(1, dict(type='RandomMask', keep_ratio=0.5, seed=4))
    cad.chunk_rows = 100  # several chunks per conv
    assert close(run(cad, x, 'sparse'), run(cad, x, 'dense'))


def test_cad_vgg_reused_buffers_give_the_same_cells_and_fresh_results():
    from test_cad_vgg import SIZE, pair
    x1, x2 = torch.randn(1, 3, *SIZE), torch.randn(1, 3, *SIZE)
    cad, _, _ = pair(1, dict(type='RandomMask', keep_ratio=0.5, seed=4))
    fresh, _, _ = pair(1, dict(type='RandomMask', keep_ratio=0.5, seed=4))
    fresh.row_buffers = None
    cad.chunk_rows = fresh.chunk_rows = 64
    first = cad.extract(x1)
    kept = first.rows.clone()
    second = cad.extract(x2)  # reuses the storages: the first result must survive
    assert torch.equal(first.rows, kept)
    assert torch.equal(second.rows, fresh.extract(x2).rows)
    assert torch.equal(kept, fresh.extract(x1).rows)
    assert cad.row_buffers._flat and fresh.row_buffers is None


def test_row_buffers_regrow_and_follow_the_dtype():
    from mmdyn.ops.row_buffers import RowBuffers
    buffers = RowBuffers()
    small = buffers.take('a', (2, 3), torch.empty(0))
    assert small.shape == (2, 3) and buffers.take('a', (1, 3), small).data_ptr() == \
        small.data_ptr()
    assert buffers.take('a', (40, 3), small).shape == (40, 3)
    assert buffers.take('a', (4, 3), torch.empty(0, dtype=torch.float64)).dtype == \
        torch.float64
    buffers.clear()
    assert not buffers._flat
    with pytest.raises(ValueError, match='reuse_buffers'):
        from mmdyn.models.backbones import CADVGG
        CADVGG(reuse_buffers=1)


@pytest.mark.parametrize('size', [3, 25, 51])
def test_both_keypoint_dilations_equal_the_square_max_pool(size):
    from mmdyn.models.mask_sources.basic import dilate
    from mmdyn.models.mask_sources.sift_keypoints import (dilate_rows_then_columns,
                                                          separable_dilate)
    pixels = torch.rand(2, 61, 47, generator=torch.Generator().manual_seed(size)) > 0.995
    pixels[0, 0, 0] = pixels[1, -1, -1] = pixels[1, 0, -1] = True  # corners: the border
    want = dilate(pixels, size)
    assert torch.equal(separable_dilate(pixels, size), want)
    assert torch.equal(dilate_rows_then_columns(pixels, size), want)
