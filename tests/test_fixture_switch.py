"""``--fixture``: a shipped config of each family trains and evaluates on its offline
fixture through the one switch (built if missing, every dataloader and evaluator pointed
at it, downloaded weights dropped with one warning, a two-iteration schedule)."""
import pytest
from mmengine.config import Config

from e2e_helpers import ROOT, logged, run_in_process
from mmdyn.datasets.fixture_configs import apply_fixture

FAMILIES = [
    ('las_resnet/faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py', 'coco', 'coco/bbox_mAP'),
    ('sar_resnet/retinanet_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py', 'coco', 'coco/bbox_mAP'),
    ('cad_resnet/mask-rcnn_cad-r50-edge035-os32to8_fpn_1x_coco.py', 'coco', 'coco/segm_mAP'),
    ('las_resnet/deeplabv3_las-r50-d8-s4444-t05_4xb4-20k_voc12aug-512x512.py', 'voc', 'mIoU'),
    ('las_resnet/pspnet_las-r50-d8-s4444-t05_4xb2-40k_cityscapes-512x1024.py', 'cityscapes',
     'mIoU'),
    ('itd_resnet/itd-r50_8xb32_in1k.py', 'digits', 'accuracy/top1'),
]


@pytest.fixture(scope='module')
def fixture_root(tmp_path_factory):
    return tmp_path_factory.mktemp('fixtures')


@pytest.mark.slow
@pytest.mark.parametrize('config, fixture, metric', FAMILIES,
                         ids=[f[0].split('/')[1].split('_')[0] for f in FAMILIES])
def test_every_config_family_trains_and_validates_through_the_switch(config, fixture, metric,
                                                                     fixture_root, tmp_path,
                                                                     monkeypatch):
    """Two iterations (VOC: one, ``--fixture-iters 1``) and a validation; the metric is
    logged (or, for a detector that detects nothing after two iterations from random
    weights, the run says so). tools/test.py takes the switch too (on the VOC
    checkpoint)."""
    monkeypatch.chdir(fixture_root)  # data/fixtures/NAME: built once per fixture
    work_dir = tmp_path / 'work'
    iters = 1 if fixture == 'voc' else 2
    out = run_in_process('tools/train.py', ROOT / 'configs' / config, '--fixture', fixture,
                         '--work-dir', work_dir,
                         *(['--fixture-iters', str(iters)] if fixture == 'voc' else []))
    assert (work_dir / f'iter_{iters}.pth').is_file()
    assert not (work_dir / f'iter_{iters + 1}.pth').exists()
    assert logged(work_dir, 'loss'), 'no training loss was logged'
    if fixture == 'coco' and not logged(work_dir, metric):
        assert 'the model detected nothing on the whole evaluation set' in out
    else:
        assert logged(work_dir, metric), out[-3000:]
    assert logged(work_dir, 'sparsity/flops_ratio') or fixture == 'digits' and \
        logged(work_dir, 'sparsity/backbone_gflops_executed')
    if fixture == 'voc':
        out = run_in_process('tools/test.py', ROOT / 'configs' / config,
                             work_dir / f'iter_{iters}.pth', '--fixture', 'voc', '--work-dir',
                             tmp_path / 'test')
        assert 'mIoU' in out and 'sparsity/flops_ratio' in out


def test_a_fixture_that_does_not_fit_the_config_says_which_does(tmp_path):
    cfg = Config.fromfile(
        str(ROOT / 'configs/las_resnet/faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py'))
    with pytest.raises(ValueError, match=r'trains on CocoDataset; use --fixture coco'):
        apply_fixture(cfg, 'voc', root=str(tmp_path))
    with pytest.raises(ValueError, match="'imagenet' is not one of"):
        apply_fixture(cfg, 'imagenet', root=str(tmp_path))
