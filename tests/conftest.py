"""Suite-wide settings."""
import os
import tempfile

import pytest
import torch

# Kernel choices measured while the suite loads the machine must not become the user's
# per-machine choices: the suite measures into its own cache (inherited by the tools
# the end-to-end tests start).
os.environ.setdefault('MMDYN_KERNEL_CACHE', tempfile.mkdtemp(prefix='mmdyn-kernels-'))
# Nothing else is pinned: the suite runs what users run (the measured dense-route
# policy, the measured kernel choices). Tests of a switch set it themselves.


@pytest.fixture(scope='module')
def one_thread():
    """Tiny tensors: one intra-op thread (a shared machine's busy cores turn OpenMP's
    waits into seconds per forward); restored afterwards. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
