"""The native route of the sparse executors: C++ kernels (``csrc/``) compiled on the
machine that runs them, at set-up (``make native``, i.e. ``python -m
mmdyn.ops.native.build``), with torch's ``cpp_extension`` and ATen's thread pool.

The pure-PyTorch executors stay the reference and the automatic fallback:
:func:`native_kernels` returns None when the extension is not built, was built from
other sources (stale), fails to load (another torch, a broken file), or when
``MMDYN_NATIVE=0``; the reason is said once, as a warning. Tests run both routes.
"""
import functools
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

NAME = 'mmdyn_native'
CSRC = Path(__file__).parent / 'csrc'
BUILD_DIR = Path(__file__).parent / '_build'
SOURCE_STAMP = BUILD_DIR / 'sources.sha256'
BUILD_FAILURE = BUILD_DIR / 'build-failed.txt'
ENV_SWITCH = 'MMDYN_NATIVE'

_loaded = {}


def sources() -> list:
    """The translation units the build compiles."""
    return sorted(CSRC.glob('*.cpp'))


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of the C++ sources and the headers they share (read once per process)."""
    digest = hashlib.sha256()
    for path in sorted(sources() + list(CSRC.glob('*.h'))):
        digest.update(path.name.encode() + b'\0' + path.read_bytes())
    return digest.hexdigest()


def native_kernels():
    """The compiled module, or None (the pure-PyTorch path runs)."""
    if os.environ.get(ENV_SWITCH, '1') == '0':
        return None
    if 'module' not in _loaded:
        module, reason = _load()
        if reason:
            warnings.warn(f'mmdyn native kernels not used: {reason}; the pure-PyTorch '
                          'path runs (build them with `make native`)', stacklevel=2)
        _loaded['module'] = module
    return _loaded['module']


def _load():
    built = sorted(BUILD_DIR.glob(f'{NAME}*.so'))
    if not built:
        failure = BUILD_FAILURE.read_text().strip() if BUILD_FAILURE.exists() else None
        return None, f'the build failed ({failure})' if failure else 'not built'
    try:
        stamp = SOURCE_STAMP.read_text().strip()
    except OSError:
        stamp = None
    if stamp != source_digest():
        return None, 'built from other sources (stale)'
    try:
        spec = importlib.util.spec_from_file_location(NAME, built[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as error:
        return None, f'{built[0].name} failed to load ({error})'
    return module, None
