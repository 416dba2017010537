"""Device strings for the device check (``device_check``): resolving one to a usable
``torch.device`` with a one-line refusal otherwise, describing it, comparing in true
float32 on it, and one-line failure reports."""
from contextlib import contextmanager

import torch

from mmdyn.ops.kernel_choice import cpu_model


class DeviceUnavailable(ValueError):
    """The device string is unknown to torch, or the device is not usable here."""


def resolve_device(name: str) -> torch.device:
    """``torch.device`` of ``name``, with its index where it has one (``cuda`` ->
    ``cuda:0``); :class:`DeviceUnavailable` with a one-line reason otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceUnavailable(f'device {name!r} is not a device torch knows; expected a '
                                'type such as cpu, cuda or mps, optionally with an index '
                                '(cuda:1)') from None
    if device.type == 'cpu':
        return torch.device('cpu')  # one CPU device: an index names nothing
    if device.type == 'meta':
        raise DeviceUnavailable(f'device {name!r}: meta tensors carry no values to compare')
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f'device {name!r}: CUDA is not available here (torch {torch.__version__}, '
                f'built for CUDA {torch.version.cuda or "none"}, '
                f'{torch.cuda.device_count()} GPU visible)')
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(f'device {name!r}: only {torch.cuda.device_count()} '
                                    'CUDA device(s) visible')
        device = torch.device('cuda', index)
    try:
        torch.zeros(1, device=device)
    except Exception as error:  # noqa: BLE001 - any backend's refusal is the answer
        raise DeviceUnavailable(f'device {name!r} is not usable here: '
                                f'{failure(error, limit=160)}') from None
    return device


def describe_device(device: torch.device) -> str:
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        return (f'{torch.cuda.get_device_name(device)} (sm{major}{minor}, {memory:.0f} GiB, '
                f'CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})')
    if device.type == 'cpu':
        threads = torch.get_num_threads()
        return f'{cpu_model()} ({threads} thread{"" if threads == 1 else "s"})'
    return str(device)


@contextmanager
def full_float32():
    """Comparisons in true float32: CUDA convolutions default to TF32 on Ampere and
    later (``cudnn.allow_tf32``), whose 10-bit mantissa alone gives ~1e-3 relative
    error between two correct paths. No effect on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def failure(error: BaseException, limit: int = 300) -> str:
    """One line naming an exception (what a report row shows), at most ``limit``
    characters of its message."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ''
    if len(message) > limit:
        message = message[:limit - 3].rstrip() + '...'
    return f'{type(error).__name__}: {message}'


def on_device(tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and \
        (device.index is None or tensor.device.index == device.index)
