"""mmdyn.ops: every sparse primitive against its dense reference."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdyn.ops import (FoldedConv, PatchGrid, PatchMasker, Window, active_patches,
                       border_groups, border_pixels, conv_on_windows, cropped_window,
                       fold_conv_bn, gather_windows, grouped_rows, gumbel_gate,
                       patch_extents, scatter_add_patches, upsample_patch_mask)
from mmdyn.ops import window_conv as window_conv_module
from mmdyn.ops.gemm import gather_gemm
from mmdyn.ops.kernel_choice import ENV_PINS, KernelChooser
from mmdyn.ops.row_buffers import RowBuffers
from mmdyn.ops.window_conv import WINDOW_GROUPS, window_tap_rows
from test_native_kernels import spy_on_native

CASES = [  # H, W, patch, stride, dilation
    (13, 17, 4, 1, 1), (13, 17, 4, 2, 1), (16, 16, 8, 2, 1), (9, 11, 3, 1, 2),
    (7, 5, 1, 2, 1), (10, 10, 7, 1, 4), (1, 1, 1, 1, 1), (5, 3, 8, 1, 1)]


@pytest.mark.parametrize('height,width,patch,stride,dilation', CASES)
@pytest.mark.parametrize('density', [0.0, 0.4, 1.0])
@pytest.mark.parametrize('cropped', [False, True], ids=['whole-patches', 'cropped-borders'])
def test_gather_conv_scatter_equals_dense_masked(height, width, patch, stride, dilation,
                                                 density, cropped):
    """Whole patches (the scatter crops border patches), or group by group of
    border_groups through cropped windows: then the conv computes exactly the in-map
    pixels of the active patches (as many outputs as patch_extents counts). Both give
    the dense masked result."""
    torch.manual_seed(height * width + patch)
    x = torch.randn(2, 5, height, width)
    weight, bias = torch.randn(6, 5, 3, 3), torch.randn(6)
    dense = F.conv2d(x, weight, bias, stride=stride, padding=dilation, dilation=dilation)
    grid = PatchGrid(dense.shape[2], dense.shape[3], patch)
    mask = (torch.rand(2, 1, *grid.shape) < density).float()
    index = active_patches(mask)
    window = Window(patch * stride, (patch - 1) * stride + 2 * dilation + 1, dilation)
    base = torch.randn_like(dense)
    groups = border_groups(index, grid) if cropped else [(index, None)]
    assert sum(len(group) for group, _ in groups) == len(index)
    result, computed = base.clone(), 0
    for group, extent in groups:
        if not group.numel():
            continue
        patches = F.conv2d(gather_windows(x, group, cropped_window(window, grid, extent)
                                          if extent else window),
                           weight, bias, stride=stride, dilation=dilation)
        assert patches.shape[2:] == (extent or (patch, patch))
        computed += patches[:, 0].numel()
        result = scatter_add_patches(result, patches, group, grid, extent=extent)
    if cropped:
        assert computed == float((mask * patch_extents(grid)).sum())
    expected = base + dense * upsample_patch_mask(mask, grid)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


def test_border_groups_by_hand():
    """A 50 x 76 map in 7 x 7 patches: the last patch row keeps 1 row, the last column
    6 columns; a dividing grid is one group of whole patches."""
    grid = PatchGrid(50, 76, 7)
    index = torch.tensor([[0, 0, 0], [0, 7, 3], [0, 2, 10], [0, 7, 10], [1, 0, 10]])
    groups = {extent: group[:, 1:].tolist() for group, extent in border_groups(index, grid)}
    assert groups == {(7, 7): [[0, 0]], (7, 6): [[2, 10], [0, 10]], (1, 7): [[7, 3]],
                      (1, 6): [[7, 10]]}
    assert cropped_window(Window(14, 15, 1), grid, (1, 6)) == Window(14, (3, 13), 1)
    whole = PatchGrid(56, 77, 7)
    [(group, extent)] = border_groups(index, whole)
    assert group is index and extent == (7, 7)


@pytest.mark.parametrize('height,width,patch,stride,dilation', CASES)
@pytest.mark.parametrize('relu_input,relu', [(True, True), (False, False)],
                         ids=['relu', 'linear'])
@pytest.mark.parametrize('way,route', [('one_product', 'native'), ('one_product', 'torch'),
                                       ('group_by_group', 'native'), ('from_map', 'native'),
                                       ('from_map', 'torch')])
def test_window_conv_rows_of_all_groups_equal_the_dense_conv(height, width, patch, stride,
                                                             dilation, relu_input, relu,
                                                             route, way, monkeypatch):
    """The groups of whole and cropped border patches of a batch of two odd-sized maps,
    in one product (every group's windows as one table, a gather-GEMM on their tap
    rows), group by group, or from the map (one gather-GEMM on tap rows into the map
    itself, the ReLU and the zero padding applied as they are read), equal the dense
    conv of the (ReLU'd) map at their pixels, group after group; a product ran in both
    product ways, one group or several (the map itself left as it was)."""
    spy_on_native(monkeypatch, route)
    monkeypatch.setenv(ENV_PINS, f'window_groups={way}')
    products = []

    def counted_gather_gemm(*args, **kwargs):
        products.append(args[1].shape)
        return gather_gemm(*args, **kwargs)
    monkeypatch.setattr(window_conv_module, 'gather_gemm', counted_gather_gemm)
    torch.manual_seed(height * width + patch + stride)
    x = torch.randn(2, 5, height, width).contiguous(memory_format=torch.channels_last)
    conv = FoldedConv(torch.randn(6, 5, 3, 3), torch.randn(6), stride, dilation, dilation)
    dense = F.conv2d(x.relu() if relu_input else x, conv.weight, conv.bias, stride=stride,
                     padding=dilation, dilation=dilation)
    dense = dense.relu() if relu else dense
    grid = PatchGrid(dense.shape[2], dense.shape[3], patch)
    mask = (torch.rand(2, 1, *grid.shape) < 0.6).float()
    mask[0, 0, -1, -1] = 1  # the corner group is never empty
    groups = border_groups(active_patches(mask), grid)
    window = Window(patch * stride, (patch - 1) * stride + 2 * dilation + 1, dilation)
    window_conv = conv_on_windows(conv, x.clone(), RowBuffers(), relu_input=relu_input,
                                  relu=relu)
    with torch.no_grad():
        for _ in range(2):  # the second call reuses the table's buffer
            got = grouped_rows(groups, grid, window, window_conv)
    want = dense.permute(0, 2, 3, 1).reshape(-1, 6)[border_pixels(groups, grid)]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(window_conv.source, x, rtol=0, atol=0)
    assert len(products) == (0 if way == 'group_by_group' else 2)


@pytest.mark.parametrize('route', ['native', 'torch'])
def test_window_conv_from_map_reads_a_channel_slice_in_place(route, monkeypatch):
    """A channel slice of a channels-last map (LAS's conv1 with the gate's logit as
    one more output) is read where it lies, through the rows' pitch, with the given
    pixel ids; equal to the dense conv of the slice, the map left as it was. Windows
    that are not one padded conv's (a step other than S x stride, unequal offsets)
    are not read from the map."""
    spy_on_native(monkeypatch, route)
    monkeypatch.setenv(ENV_PINS, 'window_groups=from_map')
    torch.manual_seed(3)
    wide = torch.randn(2, 9, 15, 22).contiguous(memory_format=torch.channels_last)
    before = wide.clone()
    x = wide[:, :-1]
    conv = FoldedConv(torch.randn(5, 8, 3, 3), torch.randn(5), 1, 2, 2)
    dense = F.conv2d(x.relu(), conv.weight, conv.bias, padding=2, dilation=2)
    grid = PatchGrid(15, 22, 4)
    mask = (torch.rand(2, 1, *grid.shape) < 0.5).float()
    mask[1, 0, -1, -1] = 1
    groups = border_groups(active_patches(mask), grid)
    pixels = border_pixels(groups, grid)
    window_conv = conv_on_windows(conv, x, relu_input=True)
    assert window_conv.reads_map_directly(grid, Window(4, 8, 2))
    with torch.no_grad():
        got = grouped_rows(groups, grid, Window(4, 8, 2), window_conv, pixels)
    want = dense.permute(0, 2, 3, 1).reshape(-1, 5)[pixels]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(wide, before)
    for window in (Window(5, 9, 2), Window(4, 8, (2, 1))):
        assert not window_conv.reads_map_directly(grid, window)


def test_window_conv_keeps_group_convs_for_gradients_and_grouped_convs(monkeypatch):
    """A source whose gradient is recorded, or a grouped conv, runs a conv per group
    even where one product is pinned (the product on gathered rows is neither
    differentiable through the native kernel nor grouped); the gradient equals the
    dense conv's."""
    monkeypatch.setenv(ENV_PINS, 'window_groups=one_product')
    monkeypatch.setattr(window_conv_module, 'gather_gemm', None)  # must not be called
    grid = PatchGrid(9, 11, 4)
    window = Window(4, 6, 1)
    groups = border_groups(torch.tensor([[0, 0, 0], [0, 2, 1], [0, 1, 2], [0, 2, 2]]), grid)
    assert len(groups) == 4
    x = torch.randn(1, 4, 9, 11).contiguous(memory_format=torch.channels_last)
    source, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    conv = FoldedConv(torch.randn(4, 4, 3, 3), torch.randn(4), 1, 1, 1)
    grouped_rows(groups, grid, window, conv_on_windows(conv, source)).sum().backward()
    dense = F.conv2d(reference, conv.weight, conv.bias, padding=1)
    dense.permute(0, 2, 3, 1).reshape(-1, 4)[border_pixels(groups, grid)].sum().backward()
    torch.testing.assert_close(source.grad, reference.grad)
    grouped = FoldedConv(torch.randn(4, 2, 3, 3), torch.randn(4), 1, 1, 1, 2)
    with torch.no_grad():
        got = grouped_rows(groups, grid, window, conv_on_windows(grouped, x))
    dense = F.conv2d(x, grouped.weight, grouped.bias, padding=1, groups=2)
    torch.testing.assert_close(got, dense.permute(0, 2, 3, 1).reshape(-1, 4)[
        border_pixels(groups, grid)])


def test_window_groups_choice_times_every_way_on_equal_results(tmp_path):
    """A 13x19 map and a 17x15 one in 4x4 patches share a shape class (pixel-count
    class 256, border patches 1 and 3 pixels deep), a 12x19 one does not; the class's
    timing inputs (every border group present) run every way to the same rows, and a
    measurement times every way."""
    def shape_class(height, width):
        source = torch.zeros(1, 8, height, width)
        conv = FoldedConv(torch.zeros(8, 8, 3, 3), torch.zeros(8), 1, 1, 1)
        return conv_on_windows(conv, source).shape_class(PatchGrid(height, width, 4),
                                                         Window(4, 6, 1))
    assert shape_class(13, 19) == shape_class(17, 15) != shape_class(12, 19)
    chooser = KernelChooser(cache_dir=tmp_path)
    chooser.register(WINDOW_GROUPS)
    inputs = WINDOW_GROUPS.make_inputs(shape_class(13, 19))
    assert len(inputs[1]) == 4 and inputs[2].height % 4 == 1 and inputs[2].width % 4 == 3
    with torch.no_grad():
        ways = {name: fn(*inputs) for name, fn in WINDOW_GROUPS.candidates.items()}
        torch.testing.assert_close(ways['one_product'], ways['group_by_group'])
        torch.testing.assert_close(ways['from_map'], ways['group_by_group'], rtol=1e-4,
                                   atol=1e-4)
        fastest, seconds = chooser.measure('window_groups', shape_class(13, 19))
    assert set(seconds) == {'one_product', 'group_by_group', 'from_map'} and fastest in seconds


def test_window_tap_rows_by_hand():
    """Two 4x5 windows from row 10 of a table, 3x3 taps of stride 1: output (0, 0) reads
    rows 10, 11, 12, 15, 16, 17, 20, 21, 22; the second window starts 20 rows later.
    A window smaller than the kernel is a clear error."""
    taps = window_tap_rows(2, (4, 5), 3, 1, 1, 10, 'cpu')
    assert taps.shape == (2 * 2 * 3, 9)
    assert taps[0].tolist() == [10, 11, 12, 15, 16, 17, 20, 21, 22]
    assert taps[6].tolist() == [v + 20 for v in taps[0].tolist()]
    assert taps[3].tolist() == [15, 16, 17, 20, 21, 22, 25, 26, 27]
    strided = window_tap_rows(1, (5, 5), 3, 2, 1, 0, 'cpu')
    assert strided.shape == (4, 9) and strided[3, 0] == 2 * 5 + 2
    with pytest.raises(ValueError, match='smaller than'):
        window_tap_rows(1, (2, 5), 3, 1, 1, 0, 'cpu')


def test_scatter_does_not_modify_its_input():
    base = torch.zeros(1, 2, 8, 8)
    grid = PatchGrid(8, 8, 4)
    index = torch.tensor([[0, 1, 0]])
    out = scatter_add_patches(base, torch.ones(1, 2, 4, 4), index, grid)
    assert base.abs().sum() == 0 and out.sum() == 2 * 16
    assert out[0, 0, 4:, :4].eq(1).all() and out[0, 0, :4].eq(0).all()


def test_gather_pads_with_zeros_and_extents_count_inside_pixels():
    grid = PatchGrid(7, 9, 4)
    window = Window(4, 6, 1)
    index = torch.tensor([[0, r, c] for r in range(grid.rows) for c in range(grid.cols)])
    gathered = gather_windows(torch.ones(1, 1, 7, 9), index, window)
    assert gathered.shape == (6, 1, 6, 6)
    assert gathered[0, 0, 0].eq(0).all() and gathered[0, 0, 1:, 1:].eq(1).all()
    inside = gathered.sum(dim=(1, 2, 3))
    # rows inside per window: 5, 4; columns: 5, 6, 2
    assert inside.tolist() == [25, 30, 10, 20, 24, 8]
    assert patch_extents(grid).sum() == 7 * 9
    assert patch_extents(grid).tolist() == [[16, 16, 4], [12, 12, 3]]


def test_grid_rejects_bad_patch():
    for bad in (0, -2, 1.5, None):
        with pytest.raises(ValueError, match='patch size'):
            PatchGrid(4, 4, bad)


def test_fold_conv_bn_matches_eval_conv_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False)
    bn = nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 4, 11, 13)
    folded = fold_conv_bn(conv, bn)
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='square'):
        fold_conv_bn(nn.Conv2d(2, 2, (1, 3), padding=(0, 1)), None)


def test_gumbel_gate_straight_through_and_deterministic_eval():
    torch.manual_seed(0)
    logits = torch.randn(4, 2, 3, 3, requires_grad=True)
    hard = gumbel_gate(logits, tau=0.5, training=True)
    assert hard.shape == (4, 1, 3, 3)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    hard.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    evaluated = gumbel_gate(logits.detach(), tau=0.5, training=False)
    expected = (logits[:, 0] >= logits[:, 1]).float().unsqueeze(1)
    assert torch.equal(evaluated, expected)
    assert torch.equal(evaluated, gumbel_gate(logits.detach(), tau=0.5, training=False))


def test_gumbel_gate_follows_probabilities_and_temperature():
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(20000, 2, 1, 1)
    rate = gumbel_gate(logits, tau=1.0, training=True).mean().item()
    assert abs(rate - torch.sigmoid(torch.tensor(1.0)).item()) < 0.02
    with pytest.raises(ValueError, match='tau'):
        gumbel_gate(logits, tau=0.0, training=True)
    with pytest.raises(ValueError, match='2 logits'):
        gumbel_gate(torch.zeros(1, 3, 2, 2), tau=1.0, training=True)


def test_masker_fused_decision_equals_unfused():
    torch.manual_seed(0)
    masker = PatchMasker(8).eval()
    nn.init.normal_(masker.weight)
    x = torch.randn(2, 8, 15, 13)
    logits = masker.logits(x, (4, 3))
    weight, bias = masker.decision_weight()
    difference = F.adaptive_avg_pool2d(F.conv2d(x, weight, bias), (4, 3))
    torch.testing.assert_close(difference, logits[:, :1] - logits[:, 1:], rtol=1e-5,
                               atol=1e-5)


def test_masker_starts_dense():
    masker = PatchMasker(16).eval()
    assert masker(torch.randn(2, 16, 8, 8), (2, 2), tau=1.0).eq(1).all()


def test_ops_import_with_torch_alone():
    """mmdyn.ops must not pull in mmcv, mmdet, mmseg or mmengine."""
    code = (
        'import sys\n'
        'for name in ("mmcv", "mmdet", "mmseg", "mmengine"):\n'
        '    sys.modules[name] = None  # behaves as "not installed"\n'
        'import mmdyn.ops\n'
        'import mmdyn.ops.multires\n'
        'import torch\n'
        'grid = mmdyn.ops.PatchGrid(5, 5, 2)\n'
        'assert mmdyn.ops.patch_extents(grid).sum() == 25\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('inplace', [False, True])
@pytest.mark.parametrize('with_buffers', [False, True])
def test_scatter_relu_on_a_nonnegative_base_touches_only_the_patches(inplace, with_buffers):
    """relu(base + scatter(patches)) against the independent arithmetic: with
    ``base_nonnegative`` (a ReLU output as base) the map outside the patches is base
    itself; the gathered rows may live in reused storage."""
    from mmdyn.ops.row_buffers import RowBuffers
    torch.manual_seed(0)
    grid = PatchGrid(9, 11, 4)
    base = torch.randn(2, 6, 9, 11).relu_().contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(2, 1, *grid.shape) < 0.5).float()
    mask[0, 0, 0, 0] = 1.0
    index = active_patches(mask)
    patches = torch.randn(index.shape[0], 6, 4, 4)
    canvas = torch.zeros(2, 6, grid.rows * 4, grid.cols * 4)
    for (b, r, c), patch in zip(index.tolist(), patches):
        canvas[b, :, r * 4:r * 4 + 4, c * 4:c * 4 + 4] = patch
    expected = F.relu(base + canvas[:, :, :9, :11])
    buffers = RowBuffers() if with_buffers else None
    source = base.clone(memory_format=torch.channels_last)
    with torch.no_grad():
        got = scatter_add_patches(source, patches, index, grid, relu=True, inplace=inplace,
                                  buffers=buffers, base_nonnegative=True)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert (got.data_ptr() == source.data_ptr()) == inplace
