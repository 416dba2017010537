"""Build the native kernels on this machine: ``python -m mmdyn.ops.native.build``
(``make native`` runs it at set-up). Compiled with ``-O3 -march=native``: for the CPU
that runs them, like every kernel choice mmdyn measures. On failure the pure-PyTorch
path keeps working (exit status 1, the error in ``_build/build-failed.txt``, and
:func:`mmdyn.ops.native.native_kernels` says so once at run time)."""
import shutil
import sys

from . import BUILD_DIR, BUILD_FAILURE, NAME, SOURCE_STAMP, source_digest, sources


def build(verbose: bool = False) -> None:
    from torch.utils.cpp_extension import load
    if BUILD_DIR.exists():
        shutil.rmtree(BUILD_DIR)
    BUILD_DIR.mkdir(parents=True)
    load(name=NAME, sources=[str(p) for p in sources()], build_directory=str(BUILD_DIR),
         extra_cflags=['-O3', '-march=native', '-fopenmp'], extra_ldflags=['-fopenmp'],
         verbose=verbose)
    SOURCE_STAMP.write_text(source_digest() + '\n')


def main() -> int:
    try:
        build(verbose='-v' in sys.argv)
    except Exception as error:  # a compiler or toolchain problem: say it, keep going
        message = f'{type(error).__name__}: {error}'
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        BUILD_FAILURE.write_text(message + '\n')
        print(f'mmdyn native kernels were not built ({message}); the pure-PyTorch path '
              'will run', file=sys.stderr)
        return 1
    print(f'mmdyn native kernels built in {BUILD_DIR}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
