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
