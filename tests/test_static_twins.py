"""DESIGN contract 7: every dynamic ResNet builds its static twin (mmdet's / mmseg's own
ResNet or ResNeXt, the backbone's weights) and prepares itself for timing. With every
mask on / every cell kept / the default permutation the backbone's sparse path
computes exactly its twin."""
from pathlib import Path

import pytest
import torch
from mmdet.models.backbones import ResNet as MMDetResNet
from mmdet.models.backbones import ResNeXt as MMDetResNeXt
from mmseg.models.backbones import ResNet as MMSegResNet

from backbone_table import randomize_batchnorm_
from mmdyn.analysis.config_benchmark import benchmark_config, parse_rate
from mmdyn.analysis.twins import EngineForward
from mmdyn.models.backbones import (CADResNet, ITDResNet, ITDResNeXt, LASResNet, SARResNet,
                                    SFSIResNet)

pytestmark = pytest.mark.usefixtures('one_thread')
SMALL = dict(base_channels=8, stem_channels=8, init_cfg=None)
V1C = dict(deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
           contract_dilation=True)


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def full_on(model):
    if isinstance(model, CADResNet):
        from mmengine.registry import MODELS
        model.mask_source = MODELS.build(dict(type='FullResolutionMask'))
    elif not isinstance(model, ITDResNet):
        model.set_forced_activation(1.0)
    return model


CASES = {
    'las-r18': (lambda: LASResNet(depth=18, granularity=(2, 2, 1, 1), **SMALL), MMDetResNet),
    'las-r50-v1c': (lambda: LASResNet(depth=50, granularity=(2, 2, 1, 1), **V1C, **SMALL),
                    MMSegResNet),
    'las-r34-sparse-conv1': (lambda: LASResNet(depth=34, granularity=(2, 2, 1, 1),
                                               basic_conv1='sparse', **SMALL), MMDetResNet),
    'sfsi-r50': (lambda: SFSIResNet(depth=50, **SMALL), MMDetResNet),
    'sfsi-rx50': (lambda: SFSIResNet(depth=50, groups=4, base_width=4, init_cfg=None),
                  MMDetResNeXt),
    'cad-r50': (lambda: CADResNet(depth=50, mask_source=dict(type='FullResolutionMask'),
                                  **SMALL), MMSegResNet),
    'itd-r18': (lambda: ITDResNet(depth=18, **SMALL), MMDetResNet),
    'itd-rx50': (lambda: ITDResNeXt(depth=50, groups=4, base_width=4, init_cfg=None),
                 MMDetResNeXt),
}


@pytest.mark.parametrize('name', list(CASES))
def test_static_twin_has_the_weights_and_equals_the_full_network(name):
    build, twin_class = CASES[name]
    torch.manual_seed(0)
    model = randomize_batchnorm_(build())
    twin = model.static_twin()
    assert type(twin) is twin_class
    assert not twin.training and not any(isinstance(m, torch.nn.BatchNorm2d)
                                         for m in twin.modules())
    sparse = full_on(model).prepare_for_timing()
    assert sparse is model and not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(1, 3, 45, 61).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for a, b in zip(sparse(x), twin(x)):
            assert a.shape == b.shape and relative_error(a, b) < 1e-4


@pytest.mark.parametrize('name', list(CASES))
def test_engine_forward_computes_the_twin(name):
    """The static twin run the way mmdyn runs static parts (folded blocks, the measured
    dense-convolution and product kernels) equals the twin's own mmdet / mmseg forward:
    mmdet and mmseg blocks, ResNeXt, contracted dilations, deep stems."""
    build, _ = CASES[name]
    torch.manual_seed(0)
    twin = randomize_batchnorm_(build()).static_twin()
    x = torch.randn(2, 3, 45, 61).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = twin(x)
    got = EngineForward(twin)(x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and relative_error(a, b) < 1e-4


def test_engine_forward_refuses_deformable_blocks():
    twin = MMDetResNet(depth=50, dcn=dict(type='DCNv2', deform_groups=1),
                       stage_with_dcn=(False, True, False, False), init_cfg=None)
    twin.eval()  # mmdet's ResNet.eval() returns None
    with pytest.raises(TypeError, match='deformable conv or plugins'):
        EngineForward(twin)(torch.randn(1, 3, 64, 64))


def test_sar_twin_is_the_plain_resnet_of_its_layout():
    """SAR's stages are not ResNet's: the twin is the plain ResNet of the same depth and
    layout (its own weights), with the same output shapes."""
    sar = SARResNet(depth=18, sar_setting='G2s2a2b1', mask_size=(2, 2, 1),
                    min_input_size=64, init_cfg=None)
    twin = sar.static_twin()
    assert type(twin) is MMDetResNet and twin.depth == 18
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert [o.shape for o in twin(x)] == [o.shape for o in sar.prepare_for_timing()(x)]


# -- one benchmark for any config (tools/analysis/benchmark_latency.py CONFIG) ----------

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def test_config_benchmark_las_classifier_whole_model():
    report = benchmark_config(str(CONFIGS / 'learning_study' /
                                  'las-r18-s4211-t05_1xb64-20e_digits-64px.py'),
                              [1.0, 0.0], (64, 64), threads=(1, ), part='model',
                              warmup=0, repeats=1)
    assert report['backbone'] == 'LASResNet' and report['twin'] == 'ResNet'
    full, empty = report['rows']
    # the twin's operator-level count equals LAS's own dense count
    assert full['gflops_static'] == pytest.approx(full['gflops_dense_own'], rel=1e-9)
    assert 1.0 <= full['flops_ratio'] < 1.01  # + the gates
    assert empty['flops_ratio'] < 0.2         # stem, gates and shortcuts only
    # full and empty masks: whichever route runs computes what the masks select
    assert all(r['ran_flops_ratio'] == pytest.approx(r['flops_ratio'], rel=1e-9)
               for r in report['rows'])
    assert all(r['static_s'] > 0 and r['dynamic_s'] > 0 for r in report['rows'])


def test_config_benchmark_cad_segmentor_with_its_own_masks_on_a_photo():
    pspnet = 'pspnet_cad-r101-d8-edge035-os16to8_4xb2-80k_cityscapes-512x1024.py'
    report = benchmark_config(str(CONFIGS / 'cad_resnet' / pspnet),
                              ['source', 0.0], (64, 96), threads=(1, ), part='backbone',
                              image='astronaut', warmup=0, repeats=1,
                              cfg_options={'model.backbone.depth': 50}, engine_twin=True)
    assert report['twin'] == 'ResNet'  # mmseg's, contract_dilation (OS8)
    assert all(r['engine_s'] > 0 and r['latency_over_engine'] == pytest.approx(
        r['latency_ratio'] / r['engine_ratio']) for r in report['rows'])
    edges, downsample_all = report['rows']
    assert edges['gflops_static'] == pytest.approx(edges['gflops_dense_own'], rel=1e-9)
    assert downsample_all['flops_ratio'] < edges['flops_ratio'] <= 1.0


def test_config_benchmark_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match='config not found'):
        benchmark_config(str(tmp_path / 'none.py'), [0.5], (64, 64))
    with pytest.raises(TypeError, match='not an mmdyn dynamic backbone'):
        benchmark_config(str(CONFIGS / 'demo' / 'faster-rcnn_r18_fpn_demo-fixture.py'),
                         [0.5], (64, 64))
    las = str(CONFIGS / 'learning_study' / 'las-r18-s4211-t05_1xb64-20e_digits-64px.py')
    with pytest.raises(ValueError, match="part='head'"):
        benchmark_config(las, [0.5], (64, 64), part='head')
    with pytest.raises(FileNotFoundError, match='skimage.data'):
        benchmark_config(las, [0.5], (64, 64), image='no_such_photo')
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        benchmark_config(las, [0.5], (64, 64), checkpoint=str(tmp_path / 'x.pth'))
    with pytest.raises(ValueError, match='LASResNet has no coarse twin'):
        benchmark_config(las, [0.5], (64, 64), coarse=True)
    cad = str(CONFIGS / 'cad_resnet' / 'faster-rcnn_cad-r50-edge035-os16to8_fpn_1x_coco.py')
    with pytest.raises(ValueError, match='backbones only'):
        benchmark_config(cad, [0.5], (64, 64), part='model', coarse=True)
    with pytest.raises(ValueError, match='backbones only'):
        benchmark_config(las, [0.5], (64, 64), part='model', engine_twin=True)
    for text in ('fast', '1.5'):
        with pytest.raises(ValueError, match='rate'):
            parse_rate(text)
    assert parse_rate('source') == 'source' and parse_rate('0.25') == 0.25


def test_cad_forced_activation_is_a_random_keep_mask_until_reset():
    cad = CADResNet(depth=50, mask_source=dict(type='FullResolutionMask'), **SMALL).eval()
    x = torch.randn(1, 3, 48, 64)
    ratios = []
    for rate in (0.0, 1.0, None):
        cad.set_forced_activation(rate)
        with torch.no_grad():
            cad(x)
        ratios.append(float(cad.records.executed_flops[0] / cad.records.dense_flops))
    assert ratios[0] < 0.7 and ratios[1] == pytest.approx(1.0) and ratios[2] == pytest.approx(1.0)
    assert 'forced_source' not in dict(cad.named_modules()) and not any(
        'forced' in k for k in cad.state_dict())


# -- CAD-VGG (D2-Net's VGG16): the same contract and the same benchmark ---------------

CAD_VGG = str(CONFIGS / 'd2net' / 'hpatches_cad-vgg16-os1-sift512-d25-51-51.py')
NARROW_VGG = {'model.features.backbone.checkpoint': None,
              'model.features.backbone.base_channels': 8}


def test_cad_vgg_twins_are_the_two_ends_of_its_range():
    """Every block kept computes the static twin (the dilated OS1 VGG16), every block
    downsampled the coarse twin (OS8) broadcast over its cells (Guarantee 2), with the
    backbone's weights; the timed call is ``extract`` (cells, no dense map)."""
    from mmdyn.models.backbones import CADVGG, D2NetVGG
    from mmdyn.models.backbones.cad_vgg import CellFeatures
    torch.manual_seed(0)
    cad = CADVGG(output_stride=1, base_channels=8, mask_source=dict(type='FullResolutionMask'))
    twin, coarse = cad.static_twin(), cad.coarse_twin()
    assert type(twin) is D2NetVGG and (twin.output_stride, coarse.output_stride) == (1, 8)
    assert twin.mean_bgr == cad.mean_bgr and not twin.training
    timed = cad.prepare_for_timing()
    x = torch.randn(1, 3, 48, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        kept = timed(x)
        assert isinstance(kept, CellFeatures)
        assert relative_error(kept.dense(), twin(x)[0]) < 1e-4
        cad.set_forced_activation(0.0)
        down = timed(x).dense()
        want = coarse(x)[0].repeat_interleave(8, 2).repeat_interleave(8, 3)
    assert relative_error(down, want) < 1e-4


def test_config_benchmark_cad_vgg_against_both_vgg16_twins():
    from mmdyn.analysis.config_benchmark import build_model_offline, input_batch
    from mmdyn.models.backbones import caffe_preprocess
    report = benchmark_config(CAD_VGG, ['source', 0.0, 1.0], (96, 128), threads=(1, ),
                              image='astronaut', warmup=0, repeats=1, coarse=True,
                              cfg_options={**NARROW_VGG, 'model.features.backbone.'
                                           'mask_source.num_keypoints': 4})
    assert (report['backbone'], report['twin']) == ('CADVGG', 'D2NetVGG')
    source, down, full = report['rows']
    # the records against mmengine's FlopAnalyzer count of the OS8 and OS1 networks
    assert down['gflops_executed'] == pytest.approx(down['gflops_coarse'], rel=1e-9)
    assert full['gflops_executed'] == pytest.approx(full['gflops_static'], rel=1e-9)
    assert down['gflops_coarse'] < source['gflops_executed'] < source['gflops_static']
    assert all(r['dynamic_s'] > 0 and r['coarse_s'] > 0 for r in report['rows'])
    # the timed input is Caffe-preprocessed (BGR minus the weights' mean pixel)
    import cv2
    from skimage import data
    model = build_model_offline(CAD_VGG, cfg_options=NARROW_VGG)
    photo = cv2.resize(data.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)
    want = caffe_preprocess(photo, model.extractor.backbone.mean_bgr)
    assert torch.allclose(input_batch(model, (96, 128), image='astronaut'), want)


def test_config_benchmark_options_a_backbone_cannot_serve_are_clear_errors():
    las = str(CONFIGS / 'learning_study' / 'las-r18-s4211-t05_1xb64-20e_digits-64px.py')
    with pytest.raises(ValueError, match="reads image files: use part='backbone'"):
        benchmark_config(CAD_VGG, [0.5], (48, 64), part='model', cfg_options=NARROW_VGG)
    for option in ('engine_twin', 'stages', 'reference'):
        with pytest.raises(ValueError, match=f'{option}=True needs a ResNet backbone'):
            benchmark_config(CAD_VGG, [0.5], (48, 64), cfg_options=NARROW_VGG,
                             **{option: True})
        with pytest.raises(ValueError, match='backbones only'):
            benchmark_config(las, [0.5], (64, 64), part='model', **{option: True})
    with pytest.raises(ValueError, match="SFSI-ResNet's sparse blocks, not LASResNet's"):
        benchmark_config(las, [0.5], (64, 64), profile=True)


def test_median_of_processes_takes_each_timed_figure_s_median():
    from mmdyn.analysis.config_benchmark import median_of_processes

    def report(static, dynamic, rows=((2, 0.5), )):
        return dict(config='c', part='backbone', rows=[
            dict(threads=t, rate=r, static_s=static, dynamic_s=dynamic,
                 latency_ratio=dynamic / static, flops_ratio=0.5,
                 latency_over_flops=dynamic / static / 0.5, gflops_executed=1.5,
                 stages={'stem': {}}) for t, r in rows])
    reports = [report(1.0, 0.6), report(1.2, 0.61), report(0.9, 0.62)]
    merged = median_of_processes(reports)
    (row,) = merged['rows']
    assert (row['static_s'], row['dynamic_s']) == (1.0, 0.61)
    assert row['latency_ratio'] == pytest.approx(0.6 / 1.0)  # the median of the ratios
    assert row['latency_over_flops'] == pytest.approx(1.2)
    assert row['flops_ratio'] == 0.5 and row['gflops_executed'] == 1.5
    assert 'stages' not in row and merged['processes'] == reports
    assert merged['config'] == 'c'
    with pytest.raises(ValueError, match='different rows'):
        median_of_processes([report(1.0, 0.6), report(1.0, 0.6, rows=((1, 0.5), ))])


def test_folded_blocks_add_onto_an_input_they_own():
    """A folded block without a projection adds its last conv onto its input where the
    caller never reads that input again (the later blocks of ``run_static_layer``, an
    SFSI block at rate 1 that owns its input): the output is the input's memory and
    equals the block's own forward. The stage's input, and an input that is read
    again, are left as they were."""
    from mmdyn.models.backbones.resnet_parts import run_folded_block, run_static_layer
    torch.manual_seed(0)
    twin = randomize_batchnorm_(MMDetResNet(depth=50, **SMALL))
    twin.eval()
    layer = twin.layer1
    x = torch.randn(2, 8, 15, 17).contiguous(memory_format=torch.channels_last)
    kept = x.clone()
    with torch.no_grad():
        want = layer(x)
        torch.testing.assert_close(run_static_layer(layer, x, fold=True), want,
                                   rtol=1e-4, atol=1e-4)
        assert torch.equal(x, kept)
        y = layer[0](x)
        y_kept = y.clone()
        want = layer[1](y_kept)
        out = run_folded_block(layer[1], y, overwrite_input=False)
        assert torch.equal(y, y_kept) and out.data_ptr() != y.data_ptr()
        out = run_folded_block(layer[1], y, overwrite_input=True)
        assert out.data_ptr() == y.data_ptr()
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    sfsi = full_on(randomize_batchnorm_(SFSIResNet(depth=50, **SMALL))).prepare_for_timing()
    block = sfsi.layer1[1]
    y = torch.randn(1, 32, 11, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for owns in (False, True):
            block.owns_input = owns
            source = y.clone()
            out = block(source)
            assert block.ran_densely and (out.data_ptr() == source.data_ptr()) == owns
            assert owns or torch.equal(source, y)
