"""Reused storage for the sparse paths' large temporaries (mmdyn.ops.row_buffers)."""
import pytest
import torch
import torch.nn.functional as F

from backbone_table import randomize_batchnorm_
from mmdyn.models.backbones import LASResNet, SARResNet
from mmdyn.ops.row_buffers import RowBuffers, gather_rows


def test_a_slot_keeps_its_storage_and_reallocates_only_when_it_must():
    buffers, like = RowBuffers(), torch.zeros(1)
    first = buffers.take('a', (10, 4), like)
    assert buffers.take('a', (8, 5), like).data_ptr() == first.data_ptr()  # fits
    assert buffers.take('b', (10, 4), like).data_ptr() != first.data_ptr()  # own slot
    bigger = buffers.take('a', (100, 4), like)
    assert bigger.shape == (100, 4) and bigger.data_ptr() != first.data_ptr()
    assert buffers.take('a', (10, 4), like.double()).dtype == torch.float64


def test_copies_and_pickles_start_empty():
    import copy
    import pickle
    buffers = RowBuffers()
    buffers.take('a', (1000, 8), torch.zeros(1))
    for other in (copy.deepcopy(buffers), pickle.loads(pickle.dumps(buffers))):
        assert other._flat == {} and other.take('a', (2, 2), torch.zeros(1)).shape == (2, 2)
    assert 'a' in buffers._flat


def test_storage_made_in_inference_mode_is_replaced_outside_it():
    """An inference tensor cannot be written outside inference mode: a model first
    run under torch.inference_mode, then under torch.no_grad, must still run."""
    buffers, like = RowBuffers(), torch.zeros(1)
    with torch.inference_mode():
        made = buffers.take('a', (6, 3), like)
        made.fill_(1.0)
    taken = buffers.take('a', (6, 3), like)
    assert not taken.is_inference()
    taken.fill_(2.0)  # writable
    with torch.inference_mode():  # a normal tensor is writable in inference mode too
        assert buffers.take('a', (6, 3), like).data_ptr() == taken.data_ptr()


@pytest.mark.parametrize('with_buffers', [False, True])
def test_gather_rows_equals_the_row_gather(with_buffers):
    rows = torch.randn(50, 7)
    index = torch.randint(0, 50, (4, 9))
    buffers = RowBuffers() if with_buffers else None
    with torch.no_grad():
        got = gather_rows(rows, index, buffers, 'x')
        again = gather_rows(rows[:, :7], index[:2], buffers, 'x')
    torch.testing.assert_close(got, rows[index.reshape(-1)], rtol=0, atol=0)
    torch.testing.assert_close(again, rows[index[:2].reshape(-1)], rtol=0, atol=0)
    if with_buffers:  # the second gather reused the first one's storage
        assert again.data_ptr() == got.data_ptr()


def test_gather_rows_records_a_graph_when_gradients_are_on():
    rows = torch.randn(20, 3, requires_grad=True)
    out = gather_rows(rows, torch.tensor([1, 1, 4]), RowBuffers(), 'x')
    out.sum().backward()
    assert rows.grad[1].eq(2).all() and rows.grad[4].eq(1).all() and rows.grad[0].eq(0).all()


def build(cls, **kwargs):
    torch.manual_seed(0)
    return randomize_batchnorm_(cls(init_cfg=None, **kwargs)).eval()


@pytest.mark.parametrize('cls, kwargs', [
    (LASResNet, dict(depth=50, granularity=(8, 4, 7, 1))),
    (SARResNet, dict(depth=50)),
])
def test_dynamic_blocks_share_one_workspace_reused_across_forwards(cls, kwargs):
    """The backbone's dynamic blocks gather windows and scatter rows into one shared
    storage: a forward in inference mode followed by one outside it runs, a second
    forward of the same input allocates no new slot storage, and the outputs equal the
    masked reference every time."""
    model = build(cls, **kwargs)
    model.set_forced_activation(0.5, seed=3)
    workspaces = {id(block.row_buffers) for block in model.dynamic_blocks()}
    assert len(workspaces) == 1 and None not in workspaces
    shared = model.dynamic_blocks()[0].row_buffers
    x = torch.randn(1, 3, 97, 131)
    model.set_execution_mode('masked')
    with torch.no_grad():
        want = model(x)
    model.set_execution_mode('sparse')
    storages = []
    for mode in (torch.inference_mode, torch.no_grad, torch.no_grad):
        with mode():
            got = model(x)
        for a, b in zip(got, want):
            assert float((a - b).norm() / b.norm()) < 1e-4
        storages.append({name: flat.data_ptr() for name, flat in shared._flat.items()})
    assert storages[1], 'the sparse path used no shared storage'
    assert storages[2] == storages[1]  # the same input: no slot was allocated again
