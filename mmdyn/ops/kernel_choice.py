"""Kernels chosen by measurement on the machine the code runs on.

Every operation the sparse executors need has more than one implementation computing
the same result (for example a GEMM as ``torch.addmm`` (MKL) or as a 1x1 channels-last
``conv2d`` (oneDNN)), and which one is faster differs between CPUs. The first time an
operation meets a *shape class*, every candidate is timed on synthetic inputs of that
class and the fastest is kept:

* in memory, for the rest of the process;
* in a per-machine JSON file (``$MMDYN_KERNEL_CACHE`` or ``~/.cache/mmdyn``), whose name
  and content carry the machine key (CPU model, ISA, thread count, torch version and the
  ISA caps set in the environment), so a later process on the same machine reuses the
  choice deterministically and another machine never reads it.

Choices are made per device. Every candidate declares the devices and dtypes it
serves (oneDNN and the native C++ kernels serve CPU tensors only); only those are timed
for a tensor, the entry of a choice names the device (``cpu``, or ``cuda`` with the
device's name and compute capability), and CUDA timings synchronise the device. Where a
single candidate serves the tensor, or the device cannot be timed (``meta``), the
op's portable candidate (plain PyTorch) is taken without measuring.

With ``MMDYN_LATENCY_PROFILE`` (a CPU latency profile calibrated on this machine, see
:mod:`mmdyn.latency`) a CPU shape class that has no stored choice yet takes, without
timing, the choice the calibration measured for the nearest shape class of the same op
and dtype (distance: the sum of |log2| ratios of the shape numbers); such choices stay
in memory and are never written to the file (:func:`profile_kernel_choices` lists
them). A shape class with a measured choice keeps it.

A candidate that raises while it is timed (an internal oneDNN op missing or changed
in another torch build) is dropped with one warning; the forward never fails because
a faster kernel is unavailable.

A missing, corrupt or stale file is measured anew (with one warning); processes that
start at once serialise their measurements through a file lock, so they neither corrupt
the file nor time against each other. ``pin_kernel(op, impl)`` or the environment
variable ``MMDYN_KERNELS="gemm=addmm,gemm_acc=conv1x1"`` fixes a choice (on the devices
and dtypes that candidate serves; elsewhere the portable candidate runs).
"""
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Optional

import torch

from mmdyn.latency.machine import ENV_PROFILE, write_atomically
from .native import native_kernels, source_digest

ENV_PINS = 'MMDYN_KERNELS'
ENV_CACHE_DIR = 'MMDYN_KERNEL_CACHE'
ISA_CAP_VARIABLES = ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS')
FORMAT_VERSION = 2  # 2: entries name the device


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (read once per process: machine_key() runs on every
    kernel choice)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_ALLOCATOR = {'tuned': False}


def mark_allocator_tuned():
    """Say that this process tuned glibc's allocator (mmdyn.analysis.keep_freed_memory):
    its measurements go to a cache of their own."""
    _ALLOCATOR['tuned'] = True


def native_digest() -> str:
    return source_digest() if native_kernels() is not None else ''


def machine_key() -> dict:
    """What a measured choice depends on."""
    return {
        'cpu': cpu_model(),
        'isa': torch.backends.cpu.get_cpu_capability(),
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'isa_caps': {name: os.environ.get(name, '') for name in ISA_CAP_VARIABLES},
        'native': native_digest(),  # the native kernels in use (their sources), or ''
        'allocator': 'tuned' if _ALLOCATOR['tuned'] else 'default',
        'format': FORMAT_VERSION,
    }


#: devices whose kernels can be timed (elsewhere, e.g. ``meta``, nothing is measured)
TIMEABLE_DEVICES = ('cpu', 'cuda')


@dataclass(frozen=True)
class Serves:
    """The tensors a candidate computes on with code of its own: ``devices`` (device
    types) and ``dtypes``; ``None`` means any. A candidate that would only hand another
    dtype to another candidate's code does not serve that dtype (it is not timed for
    it: two timings of the same code decide nothing)."""
    devices: Optional[FrozenSet[str]] = None
    dtypes: Optional[FrozenSet[torch.dtype]] = None

    def covers(self, device: torch.device, dtype: torch.dtype) -> bool:
        return (self.devices is None or device.type in self.devices) and \
            (self.dtypes is None or dtype in self.dtypes)


#: plain PyTorch: every device, every dtype
ANYWHERE = Serves()
#: oneDNN's internal ops and mmdyn's native kernels: float32 CPU tensors
CPU_FLOAT32 = Serves(frozenset({'cpu'}), frozenset({torch.float32}))


def device_tag(device) -> str:
    """The device part of a choice's entry: ``cpu``, or for CUDA the device's name and
    compute capability (``cuda.NVIDIA_H200.sm90``); other devices by their type."""
    device = torch.device(device)
    if device.type != 'cuda':
        return device.type
    return _cuda_tag(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_tag(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index).replace(' ', '_').replace(':', '_')
    return f'cuda.{name}.sm{major}{minor}'


def synchronize(device: torch.device):
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@functools.lru_cache(maxsize=8)
def load_cpu_profile(name: str):
    """The latency profile ``name`` (``MMDYN_LATENCY_PROFILE``), which must carry the
    engine model of a CPU calibrated on this machine."""
    from mmdyn.latency import load_profile  # numpy only; imported when a profile is set
    hw = load_profile(name)
    if hw.engine is None:
        raise ValueError(f'{ENV_PROFILE}={name!r}: profile {hw.name!r} has no CPU engine '
                         'model; give a profile calibrated on this machine (cpu)')
    return hw


def _split_entry(entry: str):
    """``(op, device, dtype, shape numbers)`` of a kernel-choice entry, or None."""
    op, _, rest = entry.partition(':')
    device, _, shape = rest.rpartition(':')
    dtype, *dims = shape.split('x')
    try:
        return op, device, dtype, tuple(int(d) for d in dims)
    except ValueError:
        return None


def nearest_choice(entry: str, known: Dict[str, str]) -> Optional[str]:
    """The candidate stored for the entry of ``known`` nearest to ``entry`` (same op,
    device, dtype and number of shape numbers; distance: the sum of |log2| ratios of
    the numbers), or None when none matches."""
    target = _split_entry(entry)
    if target is None:
        return None
    best, best_distance = None, math.inf
    for other, impl in known.items():
        parsed = _split_entry(other)
        if parsed is None or parsed[:3] != target[:3] or len(parsed[3]) != len(target[3]):
            continue
        distance = sum(abs(math.log2((a + 1) / (b + 1))) for a, b in zip(parsed[3], target[3]))
        if distance < best_distance:
            best, best_distance = impl, distance
    return best


class KernelOp:
    """One operation and its interchangeable implementations.

    ``candidates``: ``{name: fn(*inputs)}``, all computing the same result;
    ``make_inputs(shape_class)``: synthetic CPU inputs of a shape class, for timing
    (moved to the device timed); ``serves``: ``{name: Serves}`` for the candidates
    that do not run anywhere (:data:`ANYWHERE` otherwise); ``portable``: the candidate
    that runs on every device and dtype (the first by default).
    """

    def __init__(self, name: str, candidates: Dict[str, Callable],
                 make_inputs: Callable[[tuple], tuple],
                 serves: Optional[Dict[str, Serves]] = None, portable: Optional[str] = None):
        self.name = name
        self.candidates = candidates
        self.make_inputs = make_inputs
        self.serves = dict(serves or {})
        self.portable = portable or next(iter(candidates))
        if self.serves.get(self.portable, ANYWHERE) is not ANYWHERE:
            raise ValueError(f'{name}: the portable candidate {self.portable!r} must run '
                             'on every device and dtype')

    def eligible(self, device, dtype) -> list:
        """The candidates serving tensors of ``dtype`` on ``device``, portable first."""
        device = torch.device(device)
        names = [self.portable] + [n for n in self.candidates if n != self.portable]
        return [n for n in names if self.serves.get(n, ANYWHERE).covers(device, dtype)]


class KernelChooser:
    """Measured choices of every registered :class:`KernelOp`, per shape class."""

    def __init__(self, cache_dir: Optional[str] = None, repeats: int = 5):
        self._cache_dir = cache_dir
        self.repeats = repeats
        self.ops: Dict[str, KernelOp] = {}
        self.pins: Dict[str, str] = {}
        self._choices: Dict[str, str] = {}
        self._loaded_key = None
        self._warned = set()
        self._failed = set()  # (op, impl, device type): raised once, never timed again
        self._from_profile: Dict[str, str] = {}  # entry -> choice taken from a profile
        self._thread_lock = threading.RLock()  # one measurement at a time per process
        self._lock_depth = 0

    # -- configuration ----------------------------------------------------------
    def register(self, op: KernelOp) -> KernelOp:
        self.ops[op.name] = op
        return op

    def pin(self, op: str, impl: Optional[str]):
        """Always use ``impl`` for ``op`` (``None`` removes the pin)."""
        self._check_impl(op, impl, 'pin_kernel')
        if impl is None:
            self.pins.pop(op, None)
        else:
            self.pins[op] = impl

    def _check_impl(self, op: str, impl: Optional[str], where: str):
        if op not in self.ops:
            raise ValueError(f'{where}: unknown kernel op {op!r}; known: {sorted(self.ops)}')
        if impl is not None and impl not in self.ops[op].candidates:
            raise ValueError(f'{where}: {op}={impl!r} is not one of '
                             f'{sorted(self.ops[op].candidates)}')

    def env_pins(self) -> Dict[str, str]:
        pins = {}
        for item in filter(None, os.environ.get(ENV_PINS, '').split(',')):
            op, sep, impl = item.partition('=')
            if not sep:
                raise ValueError(f'{ENV_PINS}: expected "op=impl" items, got {item!r}')
            self._check_impl(op.strip(), impl.strip(), ENV_PINS)
            pins[op.strip()] = impl.strip()
        return pins

    @property
    def cache_file(self) -> Path:
        root = Path(self._cache_dir or os.environ.get(ENV_CACHE_DIR)
                    or Path.home() / '.cache' / 'mmdyn')
        digest = hashlib.sha1(json.dumps(machine_key(), sort_keys=True).encode()).hexdigest()
        return root / f'kernels-{digest[:16]}.json'

    # -- choosing ---------------------------------------------------------------
    def choose(self, op: str, shape_class: tuple, device='cpu') -> str:
        """The candidate of ``op`` for tensors of ``shape_class`` (its first item the
        dtype's name) on ``device``: pinned, stored, or measured now among the
        candidates that serve that device and dtype."""
        kernel, device = self.ops[op], torch.device(device)
        eligible = kernel.eligible(device, getattr(torch, shape_class[0]))
        pinned = self.pins.get(op) or self.env_pins().get(op)
        if pinned:
            return pinned if pinned in eligible else kernel.portable
        if len(eligible) == 1 or device.type not in TIMEABLE_DEVICES:
            return kernel.portable
        entry = f'{op}:{device_tag(device)}:{"x".join(map(str, shape_class))}'
        if device.type == 'cpu' and os.environ.get(ENV_PROFILE):
            guessed = self._profile_choice(entry, eligible)
            if guessed is not None:
                return guessed
        return self.measured(entry, lambda: self.measure(op, shape_class, device)[0])

    def _profile_choice(self, entry: str, eligible) -> Optional[str]:
        """The choice for ``entry`` from ``MMDYN_LATENCY_PROFILE``'s kernels when this
        machine has measured none (module docstring), else None."""
        profile = os.environ[ENV_PROFILE]
        key = f'{profile}|{entry}'
        guessed = self._from_profile.get(key)
        if guessed is None:
            self._refresh_key()
            if entry in self._choices:  # measured on this machine: that choice stands
                return None
            known = {e: impl for e, impl in load_cpu_profile(profile).kernels
                     if self._known(e, impl)}
            guessed = self._from_profile[key] = nearest_choice(entry, known) or ''
        op = entry.split(':', 1)[0]
        if guessed in eligible and (op, guessed, 'cpu') not in self._failed:
            return guessed
        return None

    def measured(self, entry: str, measure: Callable[[], object]):
        """The value stored for ``entry`` on this machine, or ``measure()`` (run once,
        under the file lock) and stored. Entries of registered ops hold an impl name,
        ``crossover:...`` entries a rate in [0, 1]."""
        self._refresh_key()
        value = self._choices.get(entry)
        if value is None:
            value = self._measure_and_store(entry, measure)
        return value

    def _refresh_key(self):
        """Drop in-memory choices when the thread count (or anything else in the
        machine key) changed since they were made."""
        key = machine_key()
        if key != self._loaded_key:
            self._choices = {}
            self._loaded_key = key
            self._choices.update(self._read_file(key))

    def _warn_once(self, message: str):
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _read_file(self, key: dict) -> Dict[str, str]:
        path = self.cache_file
        if not path.exists():
            return {}
        try:
            content = json.loads(path.read_text())
            choices = content['choices']
            if not isinstance(choices, dict):
                raise TypeError('choices is not a mapping')
        except (OSError, ValueError, KeyError, TypeError) as error:
            self._warn_once(f'mmdyn kernel-choice cache {path} is unreadable ({error}); '
                            'measuring again')
            return {}
        if content.get('machine') != key:
            self._warn_once(f'mmdyn kernel-choice cache {path} was made for another machine '
                            'or torch; ignoring it and measuring again')
            return {}
        return {entry: impl for entry, impl in choices.items()
                if self._known(entry, impl)}

    def _known(self, entry: str, value) -> bool:
        op = entry.split(':', 1)[0]
        if op == 'crossover':
            return isinstance(value, (int, float)) and 0.0 <= value <= 1.0
        return op in self.ops and value in self.ops[op].candidates

    def _measure_and_store(self, entry: str, measure: Callable[[], object]):
        path, key = self.cache_file, self._loaded_key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(str(path) + '.lock', 'a')
        except OSError as error:  # read-only home: measure, keep the choice in memory
            self._warn_once(f'mmdyn kernel-choice cache {path} cannot be written ({error})')
            self._choices[entry] = measure()
            return self._choices[entry]
        with lock, self._thread_lock:
            if self._lock_depth == 0:  # a measurement may need others (a crossover
                fcntl.flock(lock, fcntl.LOCK_EX)  # times GEMMs): lock the file once
            self._lock_depth += 1
            try:
                self._choices.update(self._read_file(key))  # another process may have
                if entry not in self._choices:              # measured it meanwhile
                    self._choices[entry] = measure()
                    self._write_file(path, key)
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        return self._choices[entry]

    def _write_file(self, path: Path, key: dict):
        content = {'machine': key, 'choices': dict(sorted(self._choices.items()))}
        write_atomically(path, json.dumps(content, indent=1))

    @torch.no_grad()
    def measure(self, op: str, shape_class: tuple, device='cpu'):
        """``(fastest, {impl: median seconds})``: every candidate serving the class's
        dtype on ``device``, on the same synthetic inputs, passes alternating so that
        all see the same machine state. A candidate that raises is dropped with one
        warning naming it and the error."""
        kernel, device = self.ops[op], torch.device(device)
        inputs = tuple(item.to(device) if isinstance(item, torch.Tensor) else item
                       for item in kernel.make_inputs(shape_class))
        names = kernel.eligible(device, getattr(torch, shape_class[0]))
        times = {name: [] for name in names if (op, name, device.type) not in self._failed}
        for step in range(1 + self.repeats):  # the first pass warms up
            for name in list(times):
                try:
                    seconds = time_call(lambda: kernel.candidates[name](*inputs), device)
                except Exception as error:  # noqa: BLE001 - any failure drops the kernel
                    if name == kernel.portable:
                        raise
                    self._failed.add((op, name, device.type))
                    self._warn_once(f'mmdyn kernel {op}={name} failed on {device.type} '
                                    f'({type(error).__name__}: {error}); it is not used')
                    del times[name]
                    continue
                if step:
                    times[name].append(seconds)
        medians = {name: statistics.median(t) for name, t in times.items()}
        return min(medians, key=medians.get), medians


#: the process-wide chooser the sparse executors use
CHOOSER = KernelChooser()


def pin_kernel(op: str, impl: Optional[str]):
    """Fix the implementation of ``op`` for this process (``None``: measure again)."""
    CHOOSER.pin(op, impl)


def kernel_choices() -> Dict[str, str]:
    """The choices made so far in this process (``'op:shape': impl``)."""
    return dict(CHOOSER._choices)


def stored_choices() -> Dict[str, str]:
    """Every choice stored for this machine key: the file's and this process's."""
    CHOOSER._refresh_key()
    return kernel_choices()


def profile_kernel_choices() -> Dict[str, str]:
    """The choices this process took from ``MMDYN_LATENCY_PROFILE``'s kernels
    (``'profile|op:device:shape': impl``; '' where the profile had none for the op)."""
    return dict(CHOOSER._from_profile)
