"""mmdyn's checkpoint loader: mmengine's own checkpoints load under torch >= 2.6, and a
missing or corrupt file gets a clear error."""
import subprocess
import sys

import pytest
import torch

import mmdyn  # noqa: F401  (installs the loader under test)


def test_mmengine_checkpoints_need_the_loader_fix(tmp_path):
    """mmengine's own checkpoints fail under torch's weights_only default; after
    ``import mmdyn`` mmengine loads them."""
    from mmengine.logging import HistoryBuffer
    path = tmp_path / 'ckpt.pth'
    torch.save(dict(state_dict={}, message_hub=dict(buffer=HistoryBuffer())), path)
    code = ('import sys; from mmengine.runner import CheckpointLoader\n'
            f'CheckpointLoader.load_checkpoint({str(path)!r})\n')
    broken = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert broken.returncode != 0 and 'weights_only' in broken.stderr.replace('Weights only',
                                                                              'weights_only')
    fixed = subprocess.run([sys.executable, '-c', 'import mmdyn\n' + code],
                           capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr[-2000:]


@pytest.mark.parametrize('content', [b'', b'not a checkpoint at all', b'PK\x03\x04broken'])
def test_corrupt_checkpoint_gets_a_clear_error(tmp_path, content):
    from mmengine.runner import CheckpointLoader
    path = tmp_path / 'broken.pth'
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match='not a readable PyTorch checkpoint'):
        CheckpointLoader.load_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'missing.pth'))


# -- nothing in a checkpoint runs on load ------------------------------------------------

class OpensAFile:
    """Unpickled, it would call ``open(path, 'w')``: the proof that a load ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


class ReachesAMethodThroughGetattr:
    """``getattr(numpy.ndarray, 'tofile')``: a method that writes files, reached through
    the one ``getattr`` mmengine's checkpoints need."""

    def __reduce__(self):
        import numpy as np
        return getattr, (np.ndarray, 'tofile')


class TrustedState:
    """A user's own class in a checkpoint they trust."""

    def __init__(self, value=0):
        self.value = value


def load(path):
    from mmengine.runner import CheckpointLoader
    return CheckpointLoader.load_checkpoint(str(path))


@pytest.mark.parametrize('payload', ['open', 'getattr'])
def test_a_checkpoint_that_runs_code_on_load_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / 'ran'
    evil = OpensAFile(str(marker)) if payload == 'open' else ReachesAMethodThroughGetattr()
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict={'w': torch.zeros(2)}, meta=dict(evil=evil)), path)
    want = 'open' if payload == 'open' else r"getattr\(<class 'numpy.ndarray'>, 'tofile'\)"
    with pytest.raises(RuntimeError, match=rf'was not loaded: unpickling it would use .*{want}'
                                           r'.*MMDYN_TRUST_CHECKPOINTS=1'):
        load(path)
    assert not marker.exists()


def test_trusting_a_checkpoint_is_explicit(tmp_path, monkeypatch):
    """The opt-ins: a type allowed by name (that type only), or every local checkpoint
    of the process trusted through the environment (off by default)."""
    from mmdyn.utils import checkpoint
    path = tmp_path / 'own.pth'
    torch.save(dict(state_dict={}, meta=dict(state=TrustedState(3))), path)
    with pytest.raises(RuntimeError, match='test_checkpoint.TrustedState'):
        load(path)
    monkeypatch.setattr(checkpoint, '_EXTRA_GLOBALS', [])
    checkpoint.allow_checkpoint_globals(TrustedState)
    assert load(path)['meta']['state'].value == 3
    marker = tmp_path / 'ran'
    torch.save(dict(meta=OpensAFile(str(marker))), tmp_path / 'code.pth')
    monkeypatch.setenv('MMDYN_TRUST_CHECKPOINTS', '1')
    load(tmp_path / 'code.pth')
    assert marker.exists()  # trusted: it did run its code, as documented
    monkeypatch.setenv('MMDYN_TRUST_CHECKPOINTS', 'yes')
    with pytest.raises(ValueError, match="MMDYN_TRUST_CHECKPOINTS='yes'"):
        load(path)


def test_mmengine_checkpoints_load_with_weights_only_and_nothing_more(tmp_path):
    """Resume state as mmengine writes it (message hub with history buffers and numpy
    values, optimizer state, the RNG state mmdyn's hook adds) loads through
    ``torch.load(weights_only=True)`` with mmdyn's allowed types, and only with them."""
    import numpy as np
    from mmengine.logging import HistoryBuffer, MessageHub

    from mmdyn.utils.checkpoint import checkpoint_globals
    hub = MessageHub.get_instance('checkpoint-test')
    for step in range(3):
        hub.update_scalar('train/loss', np.float64(1.5 - step))
    hub.update_info('dataset_meta', dict(classes=('a', 'b'), palette=[(1, 2, 3)]))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / 'iter_2.pth'
    torch.save(dict(meta=dict(iter=2, seed=np.int64(7), cfg='model = dict()'),
                    state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                    message_hub=hub.state_dict(), mmdyn_torch_rng_state=torch.get_rng_state(),
                    array=np.arange(4.0)), path)
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(path, weights_only=True)  # torch's own list is not enough
    with torch.serialization.safe_globals(checkpoint_globals()):
        loaded = torch.load(path, weights_only=True)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.mean() == pytest.approx(0.5)
    assert loaded['meta']['seed'] == 7 and loaded['array'].tolist() == [0, 1, 2, 3]
    assert load(path)['optimizer']['state'][0]['momentum_buffer'].shape == (2, 3)


def test_torchvision_pretrained_weights_say_which_config_key_to_set():
    """The shipped detection configs start from ``torchvision://resnet101``; offline and
    without torchvision the error names the key and the local alternative."""
    from mmdyn.models.backbones import LASResNet
    if not getattr(sys.modules.get('torchvision'), '__mmdyn_placeholder__', False):
        pytest.skip('a real torchvision is installed')
    model = LASResNet(18, init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18'))
    with pytest.raises(RuntimeError, match=r"torchvision://resnet18: .*model\.backbone\."
                                           r"init_cfg=dict\(type='Pretrained'.*init_cfg=None"):
        model.init_weights()
