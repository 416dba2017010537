"""3x3 convolutions on multi-resolution cells, chunked, with the matrix product run by
oneDNN.

:func:`mmdyn.ops.multires.conv3x3_rows` gathers the nine taps of every output cell and
multiplies by the ``[9 C_in, C_out]`` matrix with ``torch.addmm`` (MKL's sgemm). On CPUs
where MKL takes a generic code path (AMD EPYC: measured 8.6 vs 19 GMAC/s on 2 threads
for a 19200 x 2304 x 256 product) the same product is much faster as a 1x1
convolution on a channels-last view of the gathered rows, which oneDNN runs with its
own kernels; no data is copied for the view. Chunking bounds the gathered buffer.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def onednn_matmul(rows: Tensor, weight_1x1: Tensor, bias: Tensor) -> Tensor:
    """``rows @ W.T + bias`` for ``rows`` ``[n, K]`` and ``weight_1x1`` ``[N, K, 1, 1]``,
    as a 1x1 convolution of the ``[1, K, n, 1]`` channels-last view."""
    n, k = rows.shape
    image = rows.view(1, n, 1, k).permute(0, 3, 1, 2)      # NHWC memory = the rows
    out = F.conv2d(image, weight_1x1, bias)
    return out.permute(0, 2, 3, 1).reshape(n, -1)


def conv3x3_cells(rows: Tensor, taps: Tensor, weight_1x1: Tensor, bias: Tensor,
                  chunk_rows: int = 16384) -> Tensor:
    """The 3x3 conv of :func:`~mmdyn.ops.multires.conv3x3_rows` (``taps`` from
    :meth:`CellLayout.tap_rows`, row ``n`` = zero), ``weight_1x1`` the ``[C_out, 9 C_in,
    1, 1]`` kernel in (kernel-row, kernel-col, channel) order, ``chunk_rows`` output
    cells per gather-and-multiply."""
    padded = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
    out = rows.new_empty(taps.shape[0], weight_1x1.shape[0])
    # one gather buffer for all chunks: fresh large buffers cost page faults per chunk
    buffer = rows.new_empty(min(chunk_rows, taps.shape[0]) * 9, rows.shape[1])
    for start in range(0, taps.shape[0], chunk_rows):
        chunk = taps[start:start + chunk_rows]
        gathered = buffer[:chunk.numel()]
        torch.index_select(padded, 0, chunk.reshape(-1), out=gathered)
        out[start:start + chunk.shape[0]] = onednn_matmul(
            gathered.view(chunk.shape[0], -1), weight_1x1, bias)
    return out


def matrix_to_1x1(matrix: Tensor) -> Tensor:
    """``[K, N]`` matrix (as :class:`~mmdyn.ops.FoldedConv.matrix`) -> ``[N, K, 1, 1]``."""
    return matrix.t().contiguous().view(matrix.shape[1], matrix.shape[0], 1, 1)
