"""HPatches: the fixture in the real layout, the reader and its errors, the MMA
protocol (mutual NN, reprojection, empty pairs score 0, per-kind normalisation) as an
mmengine metric and in the test loop, and the SIFT baseline."""
import os
import shutil

import cv2
import numpy as np
import pytest

from mmdyn.datasets.hpatches import (EXCLUDED_SEQUENCES, list_sequences, load_image,
                                     read_homography, read_sequence)
from mmdyn.datasets.hpatches_fixture import build_hpatches_fixture
from mmdyn.evaluation import HPatchesMMAMetric, mutual_nearest_neighbours, summarize
from mmdyn.evaluation.hpatches_mma import sequence_results
from mmdyn.models.keypoints import SiftFeatures


@pytest.fixture(scope='module')
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('hpatches')
    build_hpatches_fixture(str(root), num_viewpoint=2, num_illumination=1, size=(96, 128))
    return str(root)


def test_fixture_has_the_real_layout_and_its_homographies_hold(fixture_root):
    names = sorted(os.listdir(fixture_root))
    assert names == ['i_chelsea', 'v_astronaut', 'v_coffee']
    seq = read_sequence(os.path.join(fixture_root, 'v_astronaut'))
    assert [os.path.basename(p) for p in seq.image_paths] == [f'{k}.ppm' for k in range(1, 7)]
    assert seq.kind == 'v' and seq.homographies.shape == (5, 3, 3)
    ref = load_image(seq.image_paths[0]).astype(np.float32)
    for k in (1, 4):
        warped = load_image(seq.image_paths[k]).astype(np.float32)
        # inverse-warp image k back with H_1_k: equals image 1 away from the border
        back = cv2.warpPerspective(warped, np.linalg.inv(seq.homographies[k - 1]), (128, 96))
        inner = (slice(30, 66), slice(40, 88))
        assert np.abs(back[inner] - ref[inner]).mean() < 12
        assert np.abs(warped[inner] - ref[inner]).mean() > np.abs(back[inner] - ref[inner]).mean()
    illum = read_sequence(os.path.join(fixture_root, 'i_chelsea'))
    assert np.allclose(illum.homographies, np.eye(3))


def test_protocol_constants_and_exclusion(tmp_path, fixture_root):
    assert len(EXCLUDED_SEQUENCES) == 8 and 'v_talent' in EXCLUDED_SEQUENCES
    assert sum(n.startswith('i_') for n in EXCLUDED_SEQUENCES) == 5
    root = tmp_path / 'root'
    shutil.copytree(fixture_root, root)
    shutil.copytree(root / 'v_coffee', root / 'v_talent')
    assert [s.name for s in list_sequences(str(root))] == ['i_chelsea', 'v_astronaut', 'v_coffee']
    assert len(list_sequences(str(root), exclude=())) == 4


def features(xy, desc):
    return dict(keypoints=np.asarray(xy, float), descriptors=np.asarray(desc, np.float32))


def test_mma_is_computed_as_in_the_d2net_notebook():
    eye = np.eye(3)
    d = np.eye(4, dtype=np.float32)
    ref = features([[0, 0], [10, 0], [20, 0], [30, 0]], d)
    # image k: the same descriptors, keypoints displaced by 0, 1.5, 2.5, 7 px
    moved = features([[0, 0], [11.5, 0], [20, 2.5], [37, 0]], d)
    empty = features(np.zeros((0, 2)), np.zeros((0, 4)))
    result = sequence_results('v_x', 'v', [ref, moved, moved, empty, moved, moved],
                              [eye] * 5, thresholds=(1, 2, 3, 10))
    assert result['accuracy'][0] == [0.25, 0.5, 0.75, 1.0]
    assert result['accuracy'][2] == [0.0, 0.0, 0.0, 0.0]           # no match: 0
    assert result['matches'] == [4, 4, 0, 4, 4]
    ident = sequence_results('i_y', 'i', [ref] * 6, [eye] * 5, thresholds=(1, 2, 3, 10))
    metrics = summarize([result, ident], thresholds=(1, 2, 3, 10))
    assert metrics['mma_v@1'] == pytest.approx(0.25 * 4 / 5)
    assert metrics['mma_i@1'] == 1.0
    assert metrics['mma@1'] == pytest.approx((0.25 * 4 + 5) / 10)
    assert metrics['num_pairs'] == 10
    # mutual nearest neighbour keeps only the pairs that choose each other
    a = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    b = np.array([[1, 0], [0, 1]], np.float32)
    assert mutual_nearest_neighbours(a, b).tolist() == [[0, 0], [2, 1]]


def test_identity_pairs_with_sift_score_mma_1_in_the_mmengine_test_loop(tmp_path):
    from mmengine.runner import Runner
    root = tmp_path / 'identity'
    build_hpatches_fixture(str(root), num_viewpoint=1, num_illumination=1, size=(96, 128),
                           identity=True)
    runner = Runner(
        model=dict(type='HPatchesFeatureModel', features=dict(type='SiftFeatures')),
        work_dir=str(tmp_path / 'work'),
        test_dataloader=dict(dataset=dict(type='HPatchesDataset', data_root=str(root)),
                             sampler=dict(type='DefaultSampler', shuffle=False),
                             collate_fn=dict(type='hpatches_collate'), batch_size=1,
                             num_workers=0),
        test_cfg=dict(type='TestLoop'), test_evaluator=dict(type='HPatchesMMAMetric'),
        default_scope=None)
    metrics = runner.test()
    for t in range(1, 16):
        assert metrics[f'hpatches/mma@{t}'] == 1.0
    assert metrics['hpatches/num_pairs'] == 10 and metrics['hpatches/mean_matches'] > 20


def test_sift_baseline_matches_the_warped_fixture_well(fixture_root):
    metric = HPatchesMMAMetric()
    sift = SiftFeatures()
    samples = []
    for seq in list_sequences(fixture_root):
        samples.append(dict(sequence=seq.name, kind=seq.kind, homographies=seq.homographies,
                            features=[sift(load_image(p)) for p in seq.image_paths]))
    metric.process(None, samples)
    metrics = metric.evaluate(len(samples))
    assert 0.5 < metrics['hpatches/mma@3'] <= 1.0
    assert metrics['hpatches/mma_i@10'] > 0.8 and metrics['hpatches/gmacs'] == 0.0


def test_bad_sequences_are_clear_errors(tmp_path, fixture_root):
    root = tmp_path / 'bad'
    shutil.copytree(fixture_root, root)
    (root / 'v_coffee' / 'H_1_3').unlink()
    with pytest.raises(FileNotFoundError, match='v_coffee/H_1_3 is missing'):
        read_sequence(str(root / 'v_coffee'))
    (root / 'v_astronaut' / 'H_1_2').write_text('1 0 0\n0 1\n')
    with pytest.raises(ValueError, match='H_1_2'):
        read_homography(str(root / 'v_astronaut' / 'H_1_2'))
    (root / 'i_chelsea' / '6.ppm').unlink()
    with pytest.raises(ValueError, match=r"missing \['6.ppm'\]"):
        read_sequence(str(root / 'i_chelsea'))
    small = root / 'i_small'
    shutil.copytree(fixture_root + '/i_chelsea', small)
    cv2.imwrite(str(small / '4.ppm'), np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(ValueError, match='4.ppm is 50x60'):
        read_sequence(str(small))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        list_sequences(str(tmp_path / 'nowhere'))


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_keypoint_modules_resolve_in_both_scopes(scope):
    import importlib
    from mmengine.registry import DefaultScope
    registry = importlib.import_module(f'{scope}.registry')
    with DefaultScope.overwrite_default_scope(scope):
        for name in ('D2NetVGG', 'CADVGG', 'SiftKeypointMask', 'D2NetFeatures', 'SiftFeatures',
                     'HPatchesFeatureModel'):
            assert registry.MODELS.get(name) is not None, name
        assert registry.METRICS.get('HPatchesMMAMetric') is not None
        assert registry.DATASETS.get('HPatchesDataset') is not None


def test_the_cad_vgg_config_runs_in_the_mmengine_test_loop(tmp_path):
    """configs/d2net's CAD-VGG config (narrowed, random weights) on identity pairs: the
    same keypoints and descriptors in every image of a sequence score MMA 1, its
    multiply-adds below the OS1 network's."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    from mmdyn.models.backbones import D2NetVGG
    root = tmp_path / 'identity'
    build_hpatches_fixture(str(root), num_viewpoint=1, num_illumination=1, size=(96, 128),
                           identity=True)
    config = os.path.join(os.path.dirname(__file__), '..', 'configs', 'd2net',
                          'hpatches_cad-vgg16-os1-sift512-d25-51-51.py')
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'model.features.backbone.checkpoint': None,
                         'model.features.backbone.base_channels': 8,
                         'model.features.num_keypoints': 16,
                         'model.features.backbone.mask_source.num_keypoints': 16,
                         'test_dataloader.dataset.data_root': str(root)})
    cfg.work_dir = str(tmp_path / 'work')
    metrics = Runner.from_cfg(cfg).test()
    assert metrics['hpatches/mma@1'] == 1.0 and metrics['hpatches/num_pairs'] == 10
    os1 = D2NetVGG(output_stride=1, base_channels=8).macs(96, 128)
    assert 0 < metrics['hpatches/gmacs'] < os1 / 1e9
