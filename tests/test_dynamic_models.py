"""Dyn* detectors/segmentors: loss_sparsity in the total, gradients to the maskers,
sparsity statistics on predictions, the loss, the schedule hooks and the metric."""
import math
from pathlib import Path

import pytest
import torch
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config, ConfigDict
from mmengine.registry import MODELS, init_default_scope
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmdyn.engine import SparsityTargetHook, TemperatureHook
from mmdyn.evaluation import SparsityMetric
from mmdyn.models.losses import FlopsRatioLoss
from mmdyn.ops import ForwardRecord

CONFIGS = Path(__file__).parents[1] / 'configs' / 'las_resnet'


def small_detector(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    init_default_scope('mmdet')
    cfg.model.backbone.update(depth=18, init_cfg=None)
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    return MODELS.build(cfg.model)


def small_segmentor(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    init_default_scope('mmseg')
    cfg.model.pop('pretrained', None)
    norm = dict(type='BN', requires_grad=True)
    cfg.model.backbone.update(depth=18, init_cfg=None, norm_cfg=norm)
    cfg.model.decode_head.update(in_channels=512, channels=16, norm_cfg=norm, num_classes=5)
    cfg.model.auxiliary_head.update(in_channels=256, channels=8, norm_cfg=norm, num_classes=5)
    cfg.model.data_preprocessor.size = (64, 64)
    return MODELS.build(cfg.model)


def seg_inputs(batch=2, size=64):
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, size, size)))
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 255, (3, size, size), dtype=torch.uint8)
                        for _ in range(batch)], data_samples=samples)


def check_training_step(model, data):
    model.train()
    data = model.data_preprocessor(data, True)
    losses = model(**data, mode='loss')
    assert 'loss_sparsity' in losses and losses['loss_sparsity'].requires_grad
    for key in ('flops_ratio', 'activation_rate', 'sparsity_target'):
        assert 'loss' not in key and key in losses
    total, log_vars = model.parse_losses(losses)
    assert 'loss_sparsity' in log_vars
    losses['loss_sparsity'].backward(retain_graph=True)
    grads = [b.masker.weight.grad for b in model.backbone.dynamic_blocks()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    total.backward()


def check_prediction(model, data):
    model.eval()
    data = model.data_preprocessor(data, False)
    with torch.no_grad():
        results = model(**data, mode='predict')
    for sample in results:
        stats = sample.metainfo['sparsity']
        assert 0.0 <= stats['activation_rate'] <= 1.0
        assert 0 < stats['backbone_flops_executed'] < 1.1 * stats['backbone_flops_dense']
        assert len(stats['block_rates']) == 8  # ResNet-18
    return results


@pytest.mark.parametrize('name', [
    'faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py',
    'retinanet_las-r101-s4471-t04_fpn_1x_coco.py',
    'mask-rcnn_las-r101-s4421-t05_fpn_1x_coco.py'])
def test_detectors_train_and_predict(name):
    torch.manual_seed(0)
    model = small_detector(name)
    with_mask = name.startswith('mask')
    check_training_step(model, demo_mm_inputs(2, [[3, 96, 128], [3, 80, 112]],
                                              num_items=[3, 2], with_mask=with_mask))
    check_prediction(model, demo_mm_inputs(1, [[3, 96, 128]], with_mask=with_mask))


@pytest.mark.parametrize('name', [
    'deeplabv3_las-r50-d8-s4444-t05_4xb4-20k_voc12aug-512x512.py',
    'pspnet_las-r50-d8-s4444-t05_4xb2-40k_cityscapes-512x1024.py'])
def test_segmentors_train_and_predict(name):
    torch.manual_seed(0)
    model = small_segmentor(name)
    check_training_step(model, seg_inputs())
    results = check_prediction(model, seg_inputs(batch=1))
    assert results[0].pred_sem_seg.data.shape[-2:] == (64, 64)


@pytest.mark.parametrize('name', [
    'faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py',
    'mask-rcnn_las-r101-s4421-t05_fpn_1x_coco.py'])
def test_detector_predictions_equal_in_masked_and_sparse_mode(name):
    """The whole detector, not only the backbone: RoIAlign and the heads must see the
    same features whichever path the backbone took."""
    torch.manual_seed(0)
    model = small_detector(name).eval()
    model.roi_head.test_cfg.score_thr = 0.0  # random heads score below the default 0.05
    model.backbone.set_forced_activation(0.5)
    data = model.data_preprocessor(demo_mm_inputs(1, [[3, 96, 128]], with_mask=True), False)
    predictions = {}
    for mode in ('masked', 'sparse'):
        model.backbone.set_execution_mode(mode)
        with torch.no_grad():
            predictions[mode] = model(**data, mode='predict')[0].pred_instances
    masked, sparse = predictions['masked'], predictions['sparse']
    assert len(masked) > 0
    torch.testing.assert_close(sparse.bboxes, masked.bboxes, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(sparse.scores, masked.scores, rtol=1e-3, atol=1e-4)
    if 'masks' in masked:
        assert (sparse.masks != masked.masks).float().mean() < 1e-3


def test_backbone_outputs_are_plain_nchw():
    model = small_detector('retinanet_las-r101-s4421-t05_fpn_1x_coco.py').eval()
    model.backbone.set_execution_mode('sparse')
    with torch.no_grad():
        outputs = model.backbone(torch.randn(1, 3, 64, 96))
    assert all(o.is_contiguous() for o in outputs)


def _sparse_backbones():
    from test_cad_resnet import cad
    from test_las_resnet import build as las
    from test_sar_resnet import build as sar
    from test_sfsi_resnet import build as sfsi
    return {'las': lambda: las(granularity=(4, 2, 2, 1)), 'sar': lambda: sar(50),
            'sfsi': lambda: sfsi(), 'cad': lambda: cad(16)}


@pytest.mark.parametrize('name', ['las', 'sar', 'sfsi', 'cad'])
def test_sparse_outputs_take_the_layout_the_dense_resnet_returns(name):
    """NCHW in, plain NCHW out (what consumers such as mmcv's CPU RoIAlign assume);
    channels-last in, channels-last out, as the static twin returns it (no conversion
    a dense ResNet would not pay)."""
    model = _sparse_backbones()[name]()
    model.eval()
    model.set_execution_mode('sparse')
    model.set_forced_activation(0.5, seed=1)
    twin = model.static_twin().to(memory_format=torch.contiguous_format)  # weights as ours
    twin.eval()
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(1, 3, 67, 83).contiguous(memory_format=layout)
        with torch.no_grad():
            ours, theirs = model(x), twin(x)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.is_contiguous(memory_format=layout)
            assert a.is_contiguous() == b.is_contiguous()


def test_sliding_window_inference_counts_every_crop():
    model = small_segmentor('deeplabv3_las-r50-d8-s4444-t05_4xb4-20k_voc12aug-512x512.py')
    model.backbone.set_forced_activation(1.0)
    data = model.data_preprocessor(seg_inputs(batch=1), False)
    model.eval()
    with torch.no_grad():
        whole = model(**data, mode='predict')[0].metainfo['sparsity']
        model.test_cfg = ConfigDict(mode='slide', crop_size=(32, 32), stride=(32, 32))
        slide = model(**data, mode='predict')[0].metainfo['sparsity']
    # four 32x32 crops: the same pixels as one 64x64 pass (dense FLOPs scale with area)
    assert slide['backbone_flops_dense'] == pytest.approx(whole['backbone_flops_dense'],
                                                          rel=0.02)


def test_dyn_model_rejects_a_static_backbone():
    cfg = Config.fromfile(str(CONFIGS / 'retinanet_las-r101-s4421-t05_fpn_1x_coco.py'))
    init_default_scope('mmdet')
    cfg.model.backbone = dict(type='ResNet', depth=18, init_cfg=None)
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    with pytest.raises(TypeError, match='dynamic backbone'):
        MODELS.build(cfg.model)


def test_flops_ratio_loss_bounds_and_value():
    loss = FlopsRatioLoss(target=0.4, anneal_fraction=0.5)
    loss.set_progress(0.0)
    assert loss.bounds() == pytest.approx((0.4, 0.4))
    loss.set_progress(0.25)
    lower, upper = loss.bounds()
    assert lower == pytest.approx(0.2) and upper == pytest.approx(0.7)
    loss.set_progress(0.9)
    assert loss.bounds() == pytest.approx((0.0, 1.0))

    class Block:
        def __init__(self, executed, dense):
            self.executed_flops = torch.tensor(executed)
            self.dense_flops = dense
            self.activation_rate = torch.tensor([0.5])

    record = ForwardRecord({'stem': 0.0}, [Block([40.0], 100.0), Block([40.0], 100.0)])
    assert float(loss(record)['loss_sparsity']) == pytest.approx(0.0)
    loss.set_target(0.2)
    # 10 (0.4 - 0.2)^2 from the network term (default weight 10); bounds are relaxed
    assert float(loss(record)['loss_sparsity']) == pytest.approx(0.4)
    for bad in (0.0, 1.5, -1, 'half'):
        with pytest.raises(ValueError, match='sparsity target'):
            FlopsRatioLoss(target=bad)


def test_schedule_hooks_are_functions_of_the_iteration():
    tau = TemperatureHook(start=5.0, end=0.1)
    assert tau.value(0, 101) == pytest.approx(5.0)
    assert tau.value(100, 101) == pytest.approx(0.1)
    assert tau.value(50, 101) == pytest.approx(math.sqrt(5.0 * 0.1))
    assert TemperatureHook(start=2.0, schedule='constant').value(70, 100) == 2.0
    target = SparsityTargetHook(num_steps=3, end_fraction=0.5)
    values = [target.value(i, 120, 0.4) for i in (0, 19, 20, 40, 59, 60, 119)]
    assert values == pytest.approx([1.0, 1.0, 0.8, 0.6, 0.6, 0.4, 0.4])
    with pytest.raises(ValueError, match='schedule'):
        TemperatureHook(schedule='linear')
    with pytest.raises(ValueError, match='num_steps'):
        SparsityTargetHook(num_steps=0)


def test_sparsity_metric():
    metric = SparsityMetric()
    stats = [dict(activation_rate=r, backbone_flops_dense=2e9, backbone_flops_executed=e,
                  block_rates={'layer1.0': r}) for r, e in ((0.2, 1e9), (0.6, 1.5e9))]
    metric.process({}, [dict(sparsity=s) for s in stats])
    result = metric.compute_metrics(metric.results)
    assert result['activation_rate'] == pytest.approx(0.4)
    assert result['backbone_gflops_dense'] == pytest.approx(2.0)
    assert result['backbone_gflops_executed'] == pytest.approx(1.25)
    assert result['flops_ratio'] == pytest.approx(0.625)
    assert result['rate_layer1.0'] == pytest.approx(0.4)
    with pytest.raises(KeyError, match='Dyn'):
        metric.process({}, [dict(pred_instances={})])
