"""tools/d2net/extract_features.py and tools/hpatches/evaluate.py on a tiny fixture:
feature files, per-pool mask overlays, the MMA table, JSON and the two plots."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mmdyn.analysis.cad_vgg import pool_level_maps
from mmdyn.datasets.hpatches_fixture import build_hpatches_fixture

ROOT = Path(__file__).resolve().parents[1]


def tool(path):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pool_level_maps_mark_the_blocks_each_pool_merged():
    levels = np.zeros((8, 8), int)
    levels[:4, :4] = 2          # one 4x4 cell: merged by pools 1 and 2
    levels[4:6, 4:6] = 1        # one 2x2 cell: merged by pool 1 only
    first, second = pool_level_maps(levels, 2)
    assert first.shape == (8, 8) and first.sum() == 16 + 4
    assert second.shape == (4, 4) and second.sum() == 4 and second[:2, :2].all()


@pytest.mark.slow
def test_extract_features_then_evaluate(tmp_path, capsys):
    root = tmp_path / 'hp'
    build_hpatches_fixture(str(root), num_viewpoint=1, num_illumination=1, size=(64, 96))
    overlays = tmp_path / 'overlays'
    extract = tool('tools/d2net/extract_features.py')
    extract.main(['--folder', str(root / 'v_astronaut'), '--method', 'cad-os4-31',
                  '--ext', 'cad', '--num-keypoints', '64', '--overlay-dir', str(overlays),
                  '--no-progress'])
    with np.load(root / 'v_astronaut' / '1.ppm.cad') as f:
        assert f['descriptors'].shape == (len(f['keypoints']), 512) and float(f['macs']) > 0
        assert f['keypoints'].shape[1] == 2 and len(f['scores']) == len(f['keypoints'])
    assert len(list(overlays.glob('*.pool3.png'))) == 6
    with pytest.raises(SystemExit, match='unknown method'):
        extract.main(['--folder', str(root), '--method', 'orb'])
    out = tmp_path / 'eval'
    evaluate = tool('tools/hpatches/evaluate.py')
    with pytest.raises(SystemExit, match='feature file .*1.ppm.cad is missing'):
        evaluate.main(['--root', str(root), '--extensions', 'cad', '--out-dir', str(out),
                       '--no-progress'])
    extract.main(['--folder', str(root / 'i_coffee'), '--method', 'cad-os4-31', '--ext', 'cad',
                  '--num-keypoints', '64', '--no-progress'])
    evaluate.main(['--root', str(root), '--methods', 'sift', '--extensions', 'cad',
                   '--out-dir', str(out), '--num-keypoints', '64', '--no-progress'])
    printed = capsys.readouterr().out
    assert '| sift |' in printed and '| cad |' in printed
    results = json.loads((out / 'results.json').read_text())
    assert set(results) == {'sift', 'cad'} and results['cad']['gmacs'] > 0
    assert 0 <= results['cad']['mma@3'] <= 1 and results['sift']['num_pairs'] == 10
    assert (out / 'mma_curves.png').stat().st_size > 0
    assert (out / 'mma3_vs_macs.png').stat().st_size > 0


@pytest.mark.parametrize('extension', ['.jpg', '.ppm'])
def test_an_image_that_cannot_be_decoded_is_named_and_the_rest_extracted(tmp_path, extension):
    """A truncated JPEG decodes in OpenCV with only a libjpeg warning (grey rows), a
    truncated PPM not at all: both are named, skipped, and the run fails at the end
    with the others extracted."""
    import cv2
    from skimage import data
    folder = tmp_path / 'images'
    folder.mkdir()
    image = np.ascontiguousarray(data.astronaut()[::4, ::4, ::-1])  # BGR, 128 x 128
    for name in ('a', 'b'):
        assert cv2.imwrite(str(folder / f'{name}{extension}'), image)
    broken = folder / f'b{extension}'
    broken.write_bytes(broken.read_bytes()[:len(broken.read_bytes()) // 2])
    extract = tool('tools/d2net/extract_features.py')
    with pytest.raises(SystemExit, match=rf'1 of 2 images could not be decoded .*b\{extension}'):
        extract.main(['--folder', str(folder), '--method', 'd2net-os8', '--ext', 'f',
                      '--num-keypoints', '16', '--no-progress'])
    assert (folder / f'a{extension}.f').is_file()
    assert not (folder / f'b{extension}.f').exists()
