"""Latency of any mmdyn config against its static twin (DESIGN contract 7).

The config's model is built offline (pretrained weights dropped unless a checkpoint is
given); its backbone builds its static twin (``static_twin()``: the dense network it
extends, same weights) and prepares itself for timed inference
(``prepare_for_timing()``: eval, sparse path, BatchNorm folded, channels-last). Masks
are forced to given activation rates (``set_forced_activation``; CAD-ResNet: a random
keep mask of that ratio) or, for the rate ``'source'``, produced by the model itself
(its maskers / mask source) on the input. CAD-VGG (an ``HPatchesFeatureModel`` config
with a ``D2NetFeatures`` extractor) is timed as its features read it: ``extract``, the
active cells, against the dense VGG16 at its output stride, on a Caffe-preprocessed
input; its ``'source'`` masks detect their SIFT keypoints in the timed call.
``part='model'`` times the whole detector / segmentor / classifier ``predict``
(post-processing included) with the static twin swapped in for the backbone.
``coarse=True`` (CAD-ResNet: ``coarse_twin()``, the strided network at its base output
stride; CAD-VGG: VGG16 at output stride 8) also times the cheap end of the backbone's
range and interpolates the latency between the two twins by multiply-adds.
``engine_twin=True`` also times the static twin run the way mmdyn runs the static
parts of its backbones (:class:`~mmdyn.analysis.twins.EngineForward`: BatchNorm-folded
blocks through the measured dense-convolution and product kernels), which separates
what the engine makes of any dense network from what the masks save. It is timed after
the rates of each thread count, alternating with the stock twin only: a third network
in the rates' alternation changes the process's heap (at 800x1216 every network then
page-faulted 40-45 k more pages per forward, SAR-ResNet-50 at rate 1 ran 1.25-1.97 x
its twin instead of 0.97), and it is related to the rows through the stock twin. Every
figure is the median of whole calls alternating in one process, in the default process
(no allocator tuning). ``stages=True`` (ResNet backbones) times the stem and every stage
of the twin and the dynamic backbone (and with ``reference=True`` the backbone's
reference execution) in a pass of their own, for where a ratio comes from.
"""
import copy
import os
import statistics

import numpy as np
import torch
from mmcv.cnn import fuse_conv_bn

from mmdyn.models.backbones.dynamic import EXECUTION_MODES
from .complexity import backbone_conv_macs, dense_part_flops
from .timing import stage_flops, time_alternating, time_models
from .twins import EngineForward

SOURCE = 'source'


def parse_rate(text: str):
    if text == SOURCE:
        return SOURCE
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f'rate {text!r} is neither a number in [0, 1] nor {SOURCE!r}')
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f'rate {rate} is outside [0, 1]')
    return rate


def backbone_of(model):
    """The model's backbone: ``model.backbone`` (detectors, segmentors, classifiers) or
    its feature extractor's (``HPatchesFeatureModel``: D2-Net's VGG16, CAD-VGG)."""
    for owner in (model, getattr(model, 'extractor', None)):
        backbone = getattr(owner, 'backbone', None)
        if backbone is not None:
            return backbone
    raise TypeError(f'{type(model).__name__} has no backbone (model.backbone or '
                    'model.extractor.backbone)')


def build_model_offline(config: str, checkpoint=None, cfg_options=None):
    """The config's model in its default scope, no weights downloaded."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint
    if not os.path.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.model.pop('pretrained', None)
    backbone_cfg = cfg.model.get('backbone') or cfg.model.get('features', {}).get('backbone')
    if backbone_cfg is not None:
        backbone_cfg.pop('pretrained', None)
        backbone_cfg.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    backbone = backbone_of(model)
    if not hasattr(backbone, 'static_twin'):
        raise TypeError(f'{config}: the backbone {type(backbone).__name__} is not an '
                        'mmdyn dynamic backbone (no static_twin / prepare_for_timing)')
    model.eval()
    return model


def input_batch(model, hw, batch: int = 1, image=None) -> torch.Tensor:
    """``[batch, 3, H, W]`` channels-last input, normalised by the model's data
    preprocessor (D2-Net's VGG16: Caffe-preprocessed, BGR minus its weights' mean pixel):
    a photo (a path, or a ``skimage.data`` name) resized to ``hw``, or seeded noise."""
    if image is None:
        x = torch.rand(batch, 3, *hw, generator=torch.Generator().manual_seed(0)) * 255
    else:
        import cv2
        if os.path.isfile(image):
            pixels = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
        else:
            from skimage import data
            if not hasattr(data, image):
                raise FileNotFoundError(f'--image {image!r} is neither a file nor a '
                                        'skimage.data image name')
            pixels = getattr(data, image)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, -1)
        pixels = cv2.resize(pixels[..., :3], (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().repeat(batch, 1, 1, 1)
    pre = model.data_preprocessor
    mean_bgr = getattr(backbone_of(model), 'mean_bgr', None)
    if mean_bgr is not None:
        x = x.flip(1) - torch.tensor(mean_bgr, dtype=x.dtype).view(1, 3, 1, 1)
    elif getattr(pre, 'mean', None) is not None:
        x = (x - pre.mean.view(1, -1, 1, 1)) / pre.std.view(1, -1, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def force_rate(backbone, rate, seed: int = 0):
    """Masks at ``rate`` in every dynamic block, or the backbone's own (``'source'``)."""
    backbone.set_forced_activation(None if rate == SOURCE else rate, seed=seed)


def dummy_samples(model, hw, batch: int):
    """Data samples with the meta information ``predict`` needs (image = input size)."""
    meta = dict(img_shape=tuple(hw), ori_shape=tuple(hw), pad_shape=tuple(hw),
                batch_input_shape=tuple(hw), scale_factor=(1.0, 1.0))
    from mmdet.models.detectors import BaseDetector
    from mmseg.models.segmentors import BaseSegmentor
    if isinstance(model, BaseDetector):
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta) for _ in range(batch)]
    if isinstance(model, BaseSegmentor):
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta) for _ in range(batch)]
    return None


def prepare_pair(model, part: str):
    """``(dynamic, static)`` callables' modules: the prepared backbones, or for
    ``part='model'`` the whole model and a copy with the static twin as backbone
    (necks and heads BatchNorm-folded in both)."""
    if part not in ('backbone', 'model'):
        raise ValueError(f"part={part!r} must be 'backbone' or 'model'")
    if part == 'model' and not hasattr(model, 'backbone'):
        raise ValueError(f"part='model' times detectors, segmentors and classifiers; "
                         f"{type(model).__name__} reads image files: use part='backbone'")
    backbone = backbone_of(model)
    twin = backbone.static_twin()
    dynamic = backbone.prepare_for_timing()
    if part == 'backbone':
        return dynamic, twin
    static_model = copy.deepcopy(model)
    static_model.backbone = twin
    model.eval()
    static_model.eval()
    for whole in (model, static_model):
        for name, child in whole.named_children():
            if name != 'backbone':
                fuse_conv_bn(child)
    return model, static_model


def reference_execution(backbone):
    """A copy of ``backbone`` prepared on its reference execution, the dense computation
    masked (``'masked'``; CAD-ResNet: ``'dense'``), for the per-stage pass."""
    modes = getattr(backbone, 'EXECUTION_MODES', EXECUTION_MODES)
    return copy.deepcopy(backbone).prepare_for_timing('masked' if 'masked' in modes else 'dense')


def stage_breakdown(networks: dict, x, parts, static_flops: dict, executed: dict,
                    warmup: int, repeats: int) -> dict:
    """``{part: row}`` for the stem and every stage: seconds of each network in
    ``networks`` (``static``, ``dynamic``, maybe ``reference``: ResNet-like backbones,
    their passes alternating, :func:`time_models`), their ratios to the static twin's,
    and the part's executed FLOPs over the twin's."""
    timed = time_models(networks, x, warmup, repeats)
    rows = {}
    for k, part in enumerate(parts):
        static_s = timed['static'][0][k]
        row = dict(static_s=static_s, flops_ratio=executed[part] / static_flops[part])
        for name in networks.keys() - {'static'}:
            row[f'{name}_s'] = timed[name][0][k]
            row[f'{name}_ratio'] = timed[name][0][k] / static_s
        rows[part] = row
    return rows


def check_options(model, part: str, coarse: bool, engine_twin: bool, stages: bool,
                  reference: bool, profile: bool):
    """Clear errors for options the model or ``part`` cannot serve."""
    backbone = backbone_of(model)
    if coarse and not hasattr(backbone, 'coarse_twin'):
        raise ValueError(f'coarse=True: {type(backbone).__name__} has no coarse twin '
                         '(CAD-ResNet and CAD-VGG backbones do: the strided network)')
    for flag, name in ((coarse, 'coarse'), (engine_twin, 'engine_twin'), (stages, 'stages'),
                       (reference, 'reference'), (profile, 'profile')):
        if flag and part != 'backbone':
            raise ValueError(f"{name}=True times backbones only (part='backbone')")
    resnet = hasattr(backbone, 'res_layers')
    for flag, name in ((engine_twin, 'engine_twin'), (stages, 'stages'),
                       (reference, 'reference')):
        if flag and not resnet:
            raise ValueError(f'{name}=True needs a ResNet backbone (stem and stages), not '
                             f'{type(backbone).__name__}')
    from mmdyn.models.backbones import SFSIResNet
    if profile and not isinstance(backbone, SFSIResNet):
        raise ValueError(f'profile=True breaks down SFSI-ResNet\'s sparse blocks, not '
                         f'{type(backbone).__name__}\'s')


#: the row entries that are timings or ratios of timings (the others are counts)
TIMED_ENTRIES = ('static_s', 'dynamic_s', 'latency_ratio', 'latency_over_flops', 'coarse_s',
                 'interpolated_s', 'latency_over_interpolated', 'engine_s', 'engine_ratio',
                 'latency_over_engine')


def median_of_processes(reports) -> dict:
    """One report from :func:`benchmark_config`'s reports of the same measurement in
    several processes: each timed entry of a row (:data:`TIMED_ENTRIES`) is the median
    of that entry over the processes, the counts are the first process's (they do not
    depend on the process); ``processes`` keeps every report as it was."""
    first = reports[0]
    keys = [[(r['threads'], r['rate']) for r in report['rows']] for report in reports]
    for other in keys[1:]:
        if other != keys[0]:
            raise ValueError(f'the processes measured different rows: {other} against '
                             f'{keys[0]}')
    rows = []
    for k, row in enumerate(first['rows']):
        merged = {key: value for key, value in row.items()
                  if key not in ('stages', 'profile')}
        for key in TIMED_ENTRIES:
            if key in row:
                merged[key] = statistics.median(report['rows'][k][key] for report in reports)
        rows.append(merged)
    return dict({key: value for key, value in first.items() if key != 'rows'},
                rows=rows, processes=list(reports))


@torch.no_grad()
def benchmark_config(config: str, rates, hw, threads=(2, ), part: str = 'backbone',
                     checkpoint=None, image=None, batch: int = 1, warmup: int = 2,
                     repeats: int = 7, seed: int = 0, cfg_options=None,
                     coarse: bool = False, engine_twin: bool = False, stages: bool = False,
                     reference: bool = False, profile: bool = False) -> dict:
    """``{'rows': [...]}``: per thread count and rate, the median seconds of the dynamic
    and static call, their ratio, the backbone's executed multiply-adds (records of the
    timed input: the masks' count) over the static twin's (mmengine's FlopAnalyzer), and
    latency ratio / FLOPs ratio; ``ran_flops_ratio`` / ``gflops_ran``: what the operators
    computed, dense routes included; ``gflops_dense_own`` is the backbone's own count
    with every mask on. ``coarse``: see the module docstring; the rows then also
    carry ``coarse_s``, ``gflops_coarse``, ``interpolated_s`` and
    ``latency_over_interpolated``; ``engine_twin``: ``engine_s``, ``engine_ratio`` (the
    engine twin over the stock twin, timed in a pass of their own) and
    ``latency_over_engine`` (``latency_ratio / engine_ratio``). ``stages``: ``stages``,
    per stem and stage (:func:`stage_breakdown`, a pass of its own after the whole
    calls); ``reference`` adds the backbone's reference execution to that pass
    (:func:`reference_execution`); ``profile`` (SFSI-ResNet): ``profile``, the
    milliseconds per part of its sparse blocks
    (:func:`~mmdyn.analysis.sfsi.profile_sparse_parts`)."""
    model = build_model_offline(config, checkpoint, cfg_options)
    check_options(model, part, coarse, engine_twin, stages, reference, profile)
    stages = stages or reference
    backbone = backbone_of(model)
    x = input_batch(model, hw, batch, image)
    coarse_twin = backbone.coarse_twin() if coarse else None
    referenced = reference_execution(backbone) if reference else None
    dynamic, static = prepare_pair(model, part)
    twin = static if part == 'backbone' else static.backbone
    # the static network's conv multiply-adds, counted operator by operator (SAR's twin
    # is not its own dense architecture; for the others this equals the records' count)
    twin_macs = backbone_conv_macs(twin, hw)
    if part == 'model':
        from mmdyn.models.detectors import SparsityLossMixin
        samples = dummy_samples(model, hw, batch)
        # the static copy runs the stock mmdet/mmseg/mmpretrain predict (no records)
        static_predict = super(SparsityLossMixin, static).predict
        calls = dict(static=lambda: static_predict(x, copy.deepcopy(samples)),
                     dynamic=lambda: dynamic.predict(x, copy.deepcopy(samples)))
    else:
        calls = dict(static=lambda: static(x), dynamic=lambda: dynamic(x))
    if coarse_twin is not None:
        calls['coarse'] = lambda: coarse_twin(x)
        coarse_macs = backbone_conv_macs(coarse_twin, hw)
    if engine_twin:
        engine_forward = EngineForward(twin)
    if stages:
        parts = ['stem'] + list(twin.res_layers)
        static_part_flops = dense_part_flops(twin, hw)
        per_stage = dict(static=twin, dynamic=dynamic)
        if referenced is not None:
            per_stage['reference'] = referenced
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        first_row = len(rows)
        for rate in rates:
            force_rate(backbone, rate, seed)
            if referenced is not None:
                force_rate(referenced, rate, seed)
            backbone(x)
            record = backbone.records
            executed = float(record.executed_flops.mean())
            flops_ratio = executed / twin_macs
            ran = float(record.flops_that_ran.mean())
            seconds = time_alternating(calls, warmup, repeats)
            latency_ratio = seconds['dynamic'] / seconds['static']
            row = dict(threads=count, rate=rate, static_s=seconds['static'],
                       dynamic_s=seconds['dynamic'], latency_ratio=latency_ratio,
                       flops_ratio=flops_ratio, latency_over_flops=latency_ratio / flops_ratio,
                       ran_flops_ratio=ran / twin_macs,
                       gflops_static=twin_macs / 1e9, gflops_executed=executed / 1e9,
                       gflops_ran=ran / 1e9, gflops_dense_own=float(record.dense_flops) / 1e9)
            if coarse_twin is not None:
                # the latency a network with these MACs would have on the line
                # between the two twins
                share = (executed - coarse_macs) / (twin_macs - coarse_macs)
                interpolated = seconds['coarse'] + share * (seconds['static'] - seconds['coarse'])
                row.update(coarse_s=seconds['coarse'], gflops_coarse=coarse_macs / 1e9,
                           interpolated_s=interpolated,
                           latency_over_interpolated=seconds['dynamic'] / interpolated)
            if stages:
                row['stages'] = stage_breakdown(per_stage, x, parts, static_part_flops,
                                                stage_flops(record, parts)[1], warmup, repeats)
            if profile:
                from .sfsi import profile_sparse_parts
                row['profile'] = profile_sparse_parts(dynamic, x)
            rows.append(row)
        if engine_twin:
            seconds = time_alternating(dict(static=calls['static'],
                                            engine=lambda: engine_forward(x)),
                                       warmup, repeats)
            engine_ratio = seconds['engine'] / seconds['static']
            for row in rows[first_row:]:
                row.update(engine_s=seconds['engine'], engine_ratio=engine_ratio,
                           latency_over_engine=row['latency_ratio'] / engine_ratio)
    return dict(config=config, part=part, input=[batch, 3, *hw],
                backbone=type(backbone).__name__, twin=type(twin).__name__, rows=rows)
