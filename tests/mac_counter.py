"""An operator-level count of multiply-accumulates, for the records' tests."""
from torch.utils._python_dispatch import TorchDispatchMode


class MacCounter(TorchDispatchMode):
    """Multiply-accumulates of every GEMM and convolution that runs (an operator-level
    count, independent of the records' formula)."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ('mm', 'addmm', 'addmm_'):
            a, b = (args[0], args[1]) if name == 'mm' else (args[1], args[2])
            self.macs += a.shape[0] * a.shape[1] * b.shape[1]
        elif name == 'bmm':
            a, b = args[0], args[1]
            self.macs += a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        elif name in ('convolution', 'mkldnn_convolution', '_convolution_pointwise'):
            # oneDNN's, called directly (the last on a prepacked weight)
            weight = args[1]
            self.macs += out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        elif name == '_convolution_pointwise_':  # oneDNN conv accumulating into args[0]
            weight = args[2]
            self.macs += args[0].numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        elif name == '_reorder_convolution_weight':  # packing a weight: no product
            pass
        elif 'conv' in name or 'mm' in name:
            raise AssertionError(f'MacCounter does not know {name}')
        return out
