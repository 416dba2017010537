"""Does the sparse engine run, and agree with its reference, on a given device?
(DESIGN contract 8: the same forward runs on whatever device the tensors are on.)

What ``tools/analysis/check_device.py --device DEVICE`` runs:

* :func:`check_backbones`: every dynamic backbone with a sparse path, a small instance
  with non-trivial BatchNorm statistics and fixed masks (forced rates, seeded mask
  sources: masks drawn by CPU generators, so identical in every mode), moved to the
  device; its ``sparse`` outputs against its reference mode's (``masked``, or ``dense``
  for CAD) on the same device, relative L2 error < 1e-4 in float32. ITD-ResNet has one
  path: its forward must run and stay finite.
* :func:`check_train_and_val_steps`: a ``DynFasterRCNN`` and a ``DynEncoderDecoder``
  (LAS-ResNet-18) take one ``train_step`` and one ``val_step`` on the device, on
  batches of the offline COCO and VOC fixtures.
* :func:`time_sparse_vs_static`: LAS-ResNet-50 and SAR-ResNet-50, sparse at a forced
  rate against the static twin, both prepared for timing; reported, never a failure.
* :func:`run_checks`: all of it as one JSON-serialisable dict.

Every check reports its own failure (exception type and message) and the others go on.
Device strings are resolved in ``devices``, the detector and segmentor steps live in
``device_steps``.
"""
import datetime
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from mmdyn.models.backbones import (CADVGG, CADResNet, ITDResNet, LASResNet, SARResNet,
                                    SFSIResNet)
from .device_steps import check_train_and_val_steps
from .devices import (DeviceUnavailable, describe_device, failure, full_float32, on_device,
                      resolve_device)
from .timing import time_alternating

__all__ = ['DeviceUnavailable', 'resolve_device', 'check_backbones',
           'check_train_and_val_steps', 'time_sparse_vs_static', 'run_checks']

#: relative L2 error allowed between the sparse and the reference outputs (fp32 rounding)
TOLERANCE = 1e-4


# -- sparse vs reference, per backbone ----------------------------------------------


def randomize_batchnorm_(model, seed: int = 0):
    """Non-trivial BatchNorm statistics and affine parameters (a fresh model's are
    identities, which would hide a wrongly folded BatchNorm)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model


def forced(rate: float):
    """Random masks of exactly ``rate`` active patches per block, seeded."""
    return lambda model: model.set_forced_activation(rate, seed=1)


def permuted(**values):
    """ITD: a fixed option permutation (per-position attribute values)."""
    return lambda model: model.set_permutation(**values)


@dataclass(frozen=True)
class BackboneRow:
    name: str
    cls: type
    kwargs: dict
    #: the mode ``sparse`` is compared with; None: one path (the forward must run)
    reference: Optional[str]
    #: fixes the masks (ITD: the permutation) of a built model (None: a seeded mask
    #: source in ``kwargs``)
    fix: Optional[Callable] = None

    def build(self):
        torch.manual_seed(0)
        model = randomize_batchnorm_(self.cls(init_cfg=None, **self.kwargs)).eval()
        if self.fix is not None:
            self.fix(model)
        return model


SAR_SMALL = dict(mask_size=(4, 4, 2), min_input_size=32)
CAD_RANDOM = dict(mask_source=dict(type='RandomMask', keep_ratio=0.4, seed=3))
#: stride 1/2 (transposed conv), 2 and 3, kernels resized to 5 and 1, a dilation of 2
ITD_PERMUTATION = dict(stride=(0.5, 2, 3, 1), kernel_size=(5, 3, 1, 3), dilation=(1, 2, 1, 1))

#: small instances, the arguments of the test suite's backbone table
BACKBONES = [
    BackboneRow('las-r50', LASResNet, dict(depth=50, granularity=(8, 4, 7, 1)), 'masked',
                forced(0.5)),
    BackboneRow('sar-r18', SARResNet, dict(depth=18, sar_setting='G2s2a2b1', **SAR_SMALL),
                'masked', forced(0.5)),
    BackboneRow('sfsi-r50', SFSIResNet, dict(depth=50, base_channels=8, stem_channels=8,
                                             grid_prior_interval=3), 'masked', forced(0.5)),
    BackboneRow('cad-r50-os32', CADResNet, dict(depth=50, base_output_stride=32, **CAD_RANDOM),
                'dense'),
    BackboneRow('cad-vgg-os2', CADVGG, dict(output_stride=2, base_channels=8, **CAD_RANDOM),
                'dense'),
    BackboneRow('itd-r18', ITDResNet, dict(depth=18, base_channels=16, stem_channels=16), None,
                permuted(**ITD_PERMUTATION)),
]


def relative_l2(got, want) -> float:
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


def run_mode(model, mode: Optional[str], x):
    """The outputs of one eval forward in ``mode`` (None: the model's only path), and
    from its records the mean activation rate of the dynamic blocks (the fraction of
    patches, pixels or cells computed; ITD: a stage's cost relative to the default
    permutation) and the executed fraction of the dense FLOPs."""
    if mode is not None:
        model.set_execution_mode(mode)
    with torch.no_grad(), full_float32():
        outputs = [o.clone() for o in model(x)]
    record = model.records
    rate = torch.stack([block.activation_rate for block in record.blocks]).mean()
    return outputs, dict(activation_rate=float(rate),
                         flops_ratio=float(record.executed_flops.mean()) / record.dense_flops)


def check_backbone(row: BackboneRow, device: torch.device, size, batch: int) -> dict:
    """One backbone on ``device``: sparse against its reference mode (or, with one
    path, a finite forward); outputs must come back on the device."""
    report = dict(name=row.name, backbone=row.cls.__name__, reference=row.reference,
                  error=None, activation_rate=None, flops_ratio=None, passed=False,
                  failure=None)
    try:
        model = row.build().to(device)
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        mode = None if row.reference is None else 'sparse'
        sparse, statistics = run_mode(model, mode, x)
        report.update(statistics)
        problems = [f'output {k} on {o.device}' for k, o in enumerate(sparse)
                    if not on_device(o, device)]
        problems += [f'output {k} not finite' for k, o in enumerate(sparse)
                     if not torch.isfinite(o).all()]
        report['outputs'] = [list(o.shape) for o in sparse]
        if mode is not None:
            reference, _ = run_mode(model, row.reference, x)
            if [o.shape for o in reference] != [o.shape for o in sparse]:
                problems.append('output shapes differ from the reference mode')
            else:
                report['error'] = max(relative_l2(s, r) for s, r in zip(sparse, reference))
                if not report['error'] < TOLERANCE:
                    problems.append(f'relative L2 error {report["error"]:.2e} >= {TOLERANCE}')
        report['passed'] = not problems
        report['failure'] = '; '.join(problems) or None
    except Exception as error:  # noqa: BLE001 - reported, the other checks go on
        report['failure'] = failure(error)
    return report


def check_backbones(device, size=(96, 128), batch: int = 2) -> list:
    """One report per row of :data:`BACKBONES`."""
    device = resolve_device(str(device))
    return [check_backbone(row, device, tuple(size), batch) for row in BACKBONES]


# -- latency: sparse vs the static twin ---------------------------------------------

LATENCY_BACKBONES = {
    'las-r50-s8471': lambda: LASResNet(depth=50, granularity=(8, 4, 7, 1), init_cfg=None),
    'sar-r50-g2s2a2b1': lambda: SARResNet(depth=50, sar_setting='G2s2a2b1', init_cfg=None,
                                          **SAR_SMALL),
}


def time_pair(static, sparse, x, device, warmup: int, repeats: int) -> dict:
    with torch.no_grad():
        return time_alternating(dict(static=lambda: static(x), sparse=lambda: sparse(x)),
                                warmup, repeats, device)


def time_sparse_vs_static(device, size=(96, 128), batch: int = 1, rate: float = 0.5,
                          warmup: int = 2, repeats: int = 7) -> list:
    """Per backbone of :data:`LATENCY_BACKBONES`: median milliseconds of the sparse path
    (masks forced to ``rate``) and of its static twin, both BatchNorm-folded and
    channels-last on ``device``, their calls alternating (synchronised on CUDA). On x86
    CPUs call ``torch.set_flush_denormal(True)`` first, as the tools do: a randomly
    initialised twin's denormals slow it by orders of magnitude."""
    device, rows = resolve_device(str(device)), []
    for name, build in LATENCY_BACKBONES.items():
        row = dict(name=name, rate=rate, static_ms=None, sparse_ms=None, ratio=None)
        try:
            torch.manual_seed(0)
            backbone = build()
            backbone.set_forced_activation(rate, seed=0)
            static = backbone.static_twin().to(device)  # before the fold below
            sparse = backbone.prepare_for_timing().to(device)
            x = torch.randn(batch, 3, *size).to(device, memory_format=torch.channels_last)
            seconds = time_pair(static, sparse, x, device, warmup, repeats)
            row.update(static_ms=seconds['static'] * 1e3, sparse_ms=seconds['sparse'] * 1e3,
                       ratio=seconds['sparse'] / seconds['static'])
        except Exception as error:  # noqa: BLE001 - latency is reported, never a failure
            row['failure'] = failure(error)
        rows.append(row)
    return rows


# -- everything ---------------------------------------------------------------------


@contextmanager
def timed(seconds: dict, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(time.perf_counter() - start, 2)


def run_checks(device, size=(96, 128), batch: int = 2, repeats: int = 7, warmup: int = 2,
               train: bool = True, latency: bool = True) -> dict:
    """Every check on ``device`` (a string or ``torch.device``; unknown or unavailable:
    :class:`DeviceUnavailable`), as one JSON-serialisable dict; ``passed`` is the
    correctness verdict (latency never fails)."""
    device = resolve_device(str(device))
    report = dict(device=str(device), device_name=describe_device(device),
                  torch=torch.__version__, date=datetime.date.today().isoformat(),
                  threads=torch.get_num_threads(), size=list(size), batch=batch,
                  tolerance=TOLERANCE, tf32='off in the comparisons')
    seconds = report['seconds'] = {}
    with timed(seconds, 'backbones'):
        report['backbones'] = check_backbones(device, size, batch)
    with timed(seconds, 'steps'):
        report['steps'] = check_train_and_val_steps(device) if train else None
    with timed(seconds, 'latency'):
        report['latency'] = time_sparse_vs_static(device, size, 1, warmup=warmup,
                                                  repeats=repeats) if latency else None
    checks = report['backbones'] + list((report['steps'] or {}).values())
    report['passed'] = all(check['passed'] for check in checks)
    return report
