"""Claims the docs make, proved: the path ``execution_mode='auto'`` takes, the sparsity
losses by value (bounds term active, CAD Eq. 3), sparse == masked at depth 101/152,
Guarantee 2 on odd image sizes, and sparse vs masked whole-model outputs that vary."""
import math

import pytest
import torch
from mmseg.models.backbones import ResNetV1c

from backbone_table import CAD_RANDOM, SAR_SMALL, forced, randomize_batchnorm_
from mmdyn.models.backbones import CADResNet, LASResNet, SARResNet
from mmdyn.models.backbones.las_resnet import LASBasicBlock, LASBottleneck
from mmdyn.models.backbones.sar_resnet import _RefineBlock
from mmdyn.models.losses import FlopsRatioLoss, KeepRatioLoss
from mmdyn.ops import BlockRecord, ForwardRecord


def spy(monkeypatch, cls, name):
    """Count the calls of ``cls.name`` (the executor) without changing it."""
    calls = []
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        calls.append(name)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, name, wrapper)
    return calls


# (model, {executor: (owner class, method)}) -- 'masked' runs in training, 'sparse' in eval
AUTO_CASES = {
    'las-r18': (lambda: LASResNet(18, granularity=(4, 4, 2, 1), init_cfg=None),
                dict(masked=(LASBasicBlock, '_forward_masked'),
                     sparse=(LASBasicBlock, '_forward_sparse'))),
    'las-r50': (lambda: LASResNet(50, granularity=(8, 4, 7, 1), init_cfg=None),
                dict(masked=(LASBottleneck, '_forward_masked'),
                     sparse=(LASBottleneck, '_forward_sparse'))),
    'sar-r18': (lambda: SARResNet(18, sar_setting='G2s2a2b1', init_cfg=None, **SAR_SMALL),
                dict(masked=(_RefineBlock, 'forward_masked'),
                     sparse=(_RefineBlock, 'forward_sparse'))),
    'cad-r50': (lambda: CADResNet(50, init_cfg=None, **CAD_RANDOM),
                dict(masked=(CADResNet, '_stage_dense'), sparse=(CADResNet, '_stage_sparse'))),
}


@pytest.mark.parametrize('name', list(AUTO_CASES))
def test_auto_runs_masked_in_training_and_sparse_in_eval(monkeypatch, name):
    build, executors = AUTO_CASES[name]
    torch.manual_seed(0)
    model = build()
    assert all(getattr(b, 'execution_mode', getattr(model, 'execution_mode', None)) == 'auto'
               for b in model.dynamic_blocks() or [model])
    masked = spy(monkeypatch, *executors['masked'])
    sparse = spy(monkeypatch, *executors['sparse'])
    x = torch.randn(2, 3, 33, 33)
    model.train()
    model(x)
    assert masked and not sparse, 'training must take the masked (dense reference) path'
    masked.clear()
    model.eval()
    with torch.no_grad():
        model(x)
    assert sparse and not masked, 'eval must take the sparse path'


# -- the sparsity losses by value -------------------------------------------------------

def block(executed, dense, mask=None):
    executed = torch.tensor(executed)
    return BlockRecord(name='b', mask=mask, activation_rate=executed / dense,
                       dense_flops=dense, executed_flops=executed)


def test_flops_ratio_loss_with_an_active_bounds_term():
    """Two samples, two blocks, static FLOPs 20 per sample; by hand:
    network ratio per sample: (20 + 90 + 20) / 220 = 130/220, (20 + 50 + 60) / 220;
    block ratios (batch means): 0.7 and 0.4."""
    loss = FlopsRatioLoss(target=0.5, loss_weight=2.0, bounds_weight=3.0,
                          anneal_fraction=0.5)
    record = ForwardRecord({'stem': 20.0}, [block([90.0, 50.0], 100.0),
                                            block([20.0, 60.0], 100.0)])
    ratio = (130 / 220 + 130 / 220) / 2
    flops_term = (ratio - 0.5) ** 2
    # progress 0: c = 1, the bounds pin every block to the target: l = u = 0.5
    loss.set_progress(0.0)
    bounds = ((0.7 - 0.5) ** 2 + (0.5 - 0.4) ** 2) / 2
    assert float(loss(record)['loss_sparsity']) == pytest.approx(
        2.0 * (flops_term + 3.0 * bounds))
    # progress 0.125: c = cos^2(pi/8): l = 0.5c, u = 1 - 0.5c
    loss.set_progress(0.125)
    c = math.cos(math.pi / 8) ** 2
    lower, upper = 0.5 * c, 1 - 0.5 * c
    bounds = (max(0.7 - upper, 0) ** 2 + max(lower - 0.7, 0) ** 2
              + max(0.4 - upper, 0) ** 2 + max(lower - 0.4, 0) ** 2) / 2
    assert bounds > 0  # the bounds term is active
    assert float(loss(record)['loss_sparsity']) == pytest.approx(
        2.0 * (flops_term + 3.0 * bounds))


def test_flops_ratio_loss_gradient_reaches_the_blocks_out_of_bounds():
    loss = FlopsRatioLoss(target=0.5, bounds_weight=1.0)  # loss_weight 10 by default
    loss.set_progress(0.0)
    executed = torch.tensor([80.0], requires_grad=True)
    record = ForwardRecord({'stem': 0.0}, [BlockRecord('a', None, executed / 100, 100.0,
                                                       executed)])
    loss(record)['loss_sparsity'].backward()
    # d/de 10 [ (e/100 - 0.5)^2 + (e/100 - 0.5)^2 ] = 40 (e/100 - 0.5) / 100
    assert float(executed.grad) == pytest.approx(40 * 0.3 / 100)


def test_keep_ratio_loss_by_hand():
    """CAD Eq. 3: lambda * (mean keep - t)^2, the mean over the recorded masks."""
    first = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]], requires_grad=True)      # 3/4
    second = torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]], requires_grad=True)  # 1/6
    record = ForwardRecord({'stem': 0.0}, [block([1.0], 2.0, first), block([1.0], 2.0, second),
                                           block([1.0], 2.0, None)])
    loss = KeepRatioLoss(target=0.25, loss_weight=4.0)
    out = loss(record)
    keep = (3 / 4 + 1 / 6) / 2
    assert float(out['keep_ratio']) == pytest.approx(keep)
    assert float(out['loss_sparsity']) == pytest.approx(4.0 * (keep - 0.25) ** 2)
    out['loss_sparsity'].backward()
    # d/dm_i = lambda * 2 (keep - t) * 1 / (2 masks * n_i)
    assert torch.allclose(first.grad, torch.full_like(first, 4.0 * 2 * (keep - 0.25) / 8))
    assert torch.allclose(second.grad, torch.full_like(second, 4.0 * 2 * (keep - 0.25) / 12))


# -- every depth: sparse == masked at 101 / 152 -----------------------------------------

DEEP = [
    ('las-r101', LASResNet, dict(depth=101, granularity=(4, 4, 2, 1))),
    ('las-r152', LASResNet, dict(depth=152, granularity=(8, 4, 7, 1))),
    ('sar-r101', SARResNet, dict(depth=101, sar_setting='G2s2a2b1', **SAR_SMALL)),
    ('cad-r101', CADResNet, dict(depth=101, base_output_stride=32, **CAD_RANDOM)),
]


def relative_error(got, want):
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
               for a, b in zip(got, want))


@pytest.mark.parametrize('name,cls,kwargs', DEEP, ids=[d[0] for d in DEEP])
def test_sparse_equals_masked_at_depth_101_and_152(name, cls, kwargs):
    torch.manual_seed(0)
    model = randomize_batchnorm_(cls(init_cfg=None, **kwargs)).eval()
    if cls is not CADResNet:
        forced(0.4)(model)
    reference = 'dense' if cls is CADResNet else 'masked'
    x = torch.randn(1, 3, 33, 41)
    results = {}
    for mode in (reference, 'sparse'):
        model.set_execution_mode(mode)
        with torch.no_grad():
            results[mode] = model(x)
    assert relative_error(results['sparse'], results[reference]) < 1e-4


# -- CAD Guarantee 2 on odd sizes -------------------------------------------------------

@pytest.mark.parametrize('base_output_stride,size', [(16, (45, 33)), (32, (37, 45))])
def test_guarantee_2_on_odd_image_sizes(base_output_stride, size):
    """All blocks downsampled == the strided ResNetV1c at its positions; all kept ==
    the dilated ResNetV1c; for input sizes whose feature maps are odd at every stage."""
    torch.manual_seed(0)
    model = randomize_batchnorm_(CADResNet(50, base_output_stride=base_output_stride,
                                           mask_source=dict(type='DownsampleAllMask'),
                                           init_cfg=None)).eval()
    strided = ResNetV1c(depth=50, contract_dilation=True,
                        strides=(1, 2, 2, 1) if base_output_stride == 16 else (1, 2, 2, 2),
                        dilations=(1, 1, 1, 2) if base_output_stride == 16 else (1, 1, 1, 1))
    dilated = ResNetV1c(depth=50, contract_dilation=True, strides=(1, 2, 1, 1),
                        dilations=(1, 1, 2, 4))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        for net in (strided, dilated):
            net.load_state_dict(model.state_dict(), strict=True)
            net.eval()
        want_strided, want_dilated = strided(x), dilated(x)
        step4 = 2 if base_output_stride == 16 else 4
        assert want_strided[2].shape[-1] % 2 == 1 or want_strided[2].shape[-2] % 2 == 1
        for mode in ('dense', 'sparse'):
            model.set_execution_mode(mode)
            model.mask_source = _source('DownsampleAllMask')
            coarse = model(x)
            assert coarse[2][:, :, ::2, ::2].shape == want_strided[2].shape
            assert relative_error([coarse[2][:, :, ::2, ::2]], [want_strided[2]]) < 1e-4
            assert relative_error([coarse[3][:, :, ::step4, ::step4]], [want_strided[3]]) < 1e-4
            model.mask_source = _source('FullResolutionMask')
            fine = model(x)
            assert relative_error(fine, want_dilated) < 1e-4


def _source(name):
    from mmengine.registry import MODELS
    return MODELS.build(dict(type=name))


# -- whole models: sparse vs masked on outputs that vary --------------------------------

def photos(size=(64, 96)):
    """Two different real photos (skimage), uint8 CHW, as a data loader gives."""
    import cv2
    import numpy as np
    from skimage import data as skdata
    return [torch.from_numpy(np.ascontiguousarray(
        cv2.resize(img, size[::-1]).transpose(2, 0, 1)))
        for img in (skdata.astronaut(), skdata.coffee())]


def test_segmentor_logits_sparse_vs_masked_on_varying_predictions():
    """DeepLabv3 + LAS-ResNet-18 (random weights, non-trivial BN): the per-pixel logits
    agree between the sparse and the masked backbone, and they are not a constant
    answer -- the two photos get different logits and several classes are predicted."""
    from mmseg.structures import SegDataSample
    from test_dynamic_models import small_segmentor
    torch.manual_seed(0)
    model = randomize_batchnorm_(small_segmentor(
        'deeplabv3_las-r50-d8-s4444-t05_4xb4-20k_voc12aug-512x512.py')).eval()
    model.backbone.set_forced_activation(0.5, seed=2)
    samples = [SegDataSample(metainfo=dict(img_shape=(64, 96), ori_shape=(64, 96),
                                           pad_shape=(64, 96))) for _ in range(2)]
    data = model.data_preprocessor(dict(inputs=photos(), data_samples=samples), False)
    logits = {}
    for mode in ('masked', 'sparse'):
        model.backbone.set_execution_mode(mode)
        with torch.no_grad():
            logits[mode] = model.encode_decode(data['inputs'], [s.metainfo for s in samples])
    assert relative_error([logits['sparse']], [logits['masked']]) < 1e-4
    masked = logits['masked']
    assert float((masked[0] - masked[1]).abs().mean()) > 1e-2 * float(masked.abs().mean())
    assert len(masked.argmax(1).unique()) > 1


def test_detector_rpn_outputs_sparse_vs_masked_on_varying_predictions():
    """Faster R-CNN + LAS-ResNet-18: the RPN's objectness and box deltas at every
    level agree between sparse and masked, and they vary over images and positions."""
    from mmdet.structures import DetDataSample
    from test_dynamic_models import small_detector
    torch.manual_seed(0)
    model = randomize_batchnorm_(small_detector(
        'faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py')).eval()
    model.backbone.set_forced_activation(0.5, seed=2)
    samples = [DetDataSample(metainfo=dict(img_shape=(64, 96), ori_shape=(64, 96),
                                           scale_factor=(1.0, 1.0))) for _ in range(2)]
    data = model.data_preprocessor(dict(inputs=photos(), data_samples=samples), False)
    outputs = {}
    for mode in ('masked', 'sparse'):
        model.backbone.set_execution_mode(mode)
        with torch.no_grad():
            scores, deltas = model.rpn_head(model.extract_feat(data['inputs']))
        outputs[mode] = list(scores) + list(deltas)
    assert relative_error(outputs['sparse'], outputs['masked']) < 1e-4
    for level in outputs['masked']:
        assert float(level.std()) > 1e-3
        assert float((level[0] - level[1]).abs().mean()) > 1e-3 * float(level.abs().mean())
