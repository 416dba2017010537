"""Which CPU this is, and where its calibrated latency profiles live (standard library).

A calibrated profile (:mod:`mmdyn.latency.calibrate`) describes one CPU model at one
thread count. It is saved as ``<dir>/<cpu key>-t<threads>.json`` with ``<dir>`` =
``$MMDYN_LATENCY_DIR`` or ``~/.cache/mmdyn/latency`` and ``<cpu key>`` built from the
model name, family and model number (``/proc/cpuinfo``, else ``platform``), e.g.
``amd-epyc-f26-m2-t2.json``. ``load_profile('cpu')`` loads the one of this CPU at the
current thread count, ``load_profile('cpu-t4')`` the one at 4 threads.
:func:`write_atomically` writes these profiles and the kernel-choice files;
:func:`environment_variable` sets one of mmdyn's switches for a measurement.
"""
import os
import platform
import re
import sys
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

ENV_DIR = 'MMDYN_LATENCY_DIR'
#: a profile whose decisions (dense-route crossovers, kernel choices) mmdyn's engine uses
ENV_PROFILE = 'MMDYN_LATENCY_PROFILE'
CACHE_SYSFS = Path('/sys/devices/system/cpu/cpu0/cache')
_NAME = re.compile(r'^cpu(?:-t(\d+))?$')


@contextmanager
def environment_variable(name: str, value: Optional[str]):
    """``name=value`` in the environment for the duration (``None``: unset), restored
    afterwards."""
    previous = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def write_atomically(path, text: str) -> Path:
    """Write ``text`` to a fresh temporary file beside ``path``, then rename it over
    ``path``: readers and concurrent writers see the old file or the new one, never half
    of one, and an interrupted write leaves no temporary behind. Returns the path."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                                         suffix='.partial')
    try:
        with os.fdopen(handle, 'w') as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


@lru_cache(maxsize=None)
def cpu_info() -> Dict[str, str]:
    """Model name, family and model number of CPU 0 (empty strings when unknown)."""
    info = {'model_name': '', 'family': '', 'model': ''}
    keys = {'model name': 'model_name', 'cpu family': 'family', 'model': 'model'}
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            key, _, value = line.partition(':')
            key = key.strip().lower()
            if key in keys and not info[keys[key]]:
                info[keys[key]] = value.strip()
            if not line.strip() and info['model_name']:
                break  # the first processor's block is enough
    except OSError:
        pass
    if not info['model_name']:
        info['model_name'] = platform.processor() or platform.machine() or 'unknown-cpu'
    return info


def cpu_key() -> str:
    """A file-name-safe key of this CPU model, e.g. ``amd-epyc-f26-m2``."""
    info = cpu_info()
    name = re.sub(r'\(r\)|\(tm\)|\bcpu\b|@.*$|processor', ' ', info['model_name'].lower())
    key = re.sub(r'[^a-z0-9]+', '-', name).strip('-') or 'cpu'
    if info['family']:
        key += f'-f{info["family"]}'
    if info['model']:
        key += f'-m{info["model"]}'
    return key


def profile_dir() -> Path:
    """``$MMDYN_LATENCY_DIR`` or ``~/.cache/mmdyn/latency`` (not created here)."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'mmdyn' / 'latency'


def profile_name(threads: int, quick: bool = False) -> str:
    """The ``Hardware.name`` (and file stem) of this CPU's profile at ``threads``."""
    return f'{cpu_key()}-t{threads}' + ('-quick' if quick else '')


def profile_path(threads: int, quick: bool = False) -> Path:
    return profile_dir() / f'{profile_name(threads, quick)}.json'


def current_threads() -> int:
    """torch's intra-op thread count (torch is imported for this if it is not yet)."""
    torch = sys.modules.get('torch')
    if torch is None:
        try:
            import torch
        except ImportError:
            return int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count() or 1)
    return int(torch.get_num_threads())


def is_machine_name(name: str) -> bool:
    """Whether ``name`` asks for this machine's calibrated profile (``cpu``,
    ``cpu-t<N>``)."""
    return bool(_NAME.match(str(name)))


def machine_profile_path(name: str) -> Path:
    """The file of ``cpu`` / ``cpu-t<N>``; a ValueError says how to create it when it
    is missing."""
    match = _NAME.match(str(name))
    if not match:
        raise ValueError(f'{name!r} is not a machine profile name (cpu or cpu-t<N>)')
    threads = int(match.group(1)) if match.group(1) else current_threads()
    if threads < 1:
        raise ValueError(f'{name!r}: the thread count must be >= 1')
    path = profile_path(threads)
    if not path.is_file():
        found = sorted(p.name for p in profile_dir().glob(f'{cpu_key()}-t*.json'))
        raise ValueError(
            f'no calibrated CPU profile for {cpu_key()!r} at {threads} thread(s): '
            f'{path} does not exist (found: {", ".join(found) or "none"}); create it with '
            f'python tools/analysis/calibrate_latency.py --threads {threads}')
    return path


def is_this_machine(hw_name: str) -> bool:
    """Whether a profile name is one calibrated on this CPU model."""
    return re.fullmatch(re.escape(cpu_key()) + r'-t\d+(-quick)?', hw_name) is not None


def cache_sizes() -> Dict[int, int]:
    """Data/unified cache size in bytes per level, from
    ``/sys/devices/system/cpu/cpu0/cache`` ({} when absent)."""
    sizes = {}
    for index in sorted(CACHE_SYSFS.glob('index*')):
        try:
            level = int((index / 'level').read_text())
            kind = (index / 'type').read_text().strip()
            size = (index / 'size').read_text().strip().upper()
        except (OSError, ValueError):
            continue
        if kind == 'Instruction':
            continue
        scale = {'K': 1024, 'M': 1024 ** 2, 'G': 1024 ** 3}.get(size[-1:], 1)
        try:
            sizes[level] = int(size.rstrip('KMG')) * scale
        except ValueError:
            continue
    return sizes


def cache_size(level: int, default: int) -> int:
    return cache_sizes().get(level, default)


def describe() -> str:
    info = cpu_info()
    return (f'{info["model_name"]} (family {info["family"] or "?"}, model '
            f'{info["model"] or "?"})')


def optional_threads(value: Optional[int]) -> int:
    """``value`` checked, or the current thread count."""
    if value is None:
        return current_threads()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'threads must be a positive int, got {value!r}')
    return value
