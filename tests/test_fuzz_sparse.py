"""Fuzz: every dynamic backbone with a sparse path, in the default environment (the
measured dense-route policy and kernel choices a user gets), at random odd input
sizes, batch sizes and granularities, with masks from the model's own gates and with
forced rates 0 / 0.37 / 1: the sparse path gives the reference (masked or dense)
path's outputs, and never crashes.

``MMDYN_FUZZ_CASES`` / ``MMDYN_FUZZ_SEED`` widen or move the search (defaults: 200
cases, seed 20261203).
"""
import os
import random

import pytest
import torch

from backbone_table import randomize_batchnorm_
from mmdyn.models.backbones import CADVGG, CADResNet, LASResNet, SARResNet, SFSIResNet
from mmdyn.ops import PatchMasker

CASES = int(os.environ.get('MMDYN_FUZZ_CASES', 200))
SEED = int(os.environ.get('MMDYN_FUZZ_SEED', 20261203))
RATES = ('gates', 0.0, 0.37, 1.0)
TOLERANCE = 1e-4  # relative L2 per output map: float32 rounding


def mixed_gates_(model, rng: random.Random):
    """Patch maskers that decide both ways (their initial bias switches every patch on)."""
    generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
    for module in model.modules():
        if isinstance(module, PatchMasker):
            module.weight.data.normal_(0, 0.5, generator=generator)
            module.bias.data.zero_()
    return model


def las(rng, rate):
    depth = rng.choice((18, 50))
    kwargs = dict(depth=depth, granularity=tuple(rng.randint(1, 8) for _ in range(4)))
    if depth == 50:
        kwargs.update(base_channels=16, stem_channels=16)
    else:
        kwargs['basic_conv1'] = rng.choice(('dense', 'sparse'))
    return LASResNet(init_cfg=None, **kwargs), ('masked', 'sparse'), kwargs


def sar(rng, rate):
    depth = rng.choice((18, 50))
    size = rng.choice((2, 3, 4))
    kwargs = dict(depth=depth, groups=rng.choice((1, 2, 4)), mask_size=(size, size, 2),
                  min_input_size=32)
    return SARResNet(init_cfg=None, **kwargs), ('masked', 'sparse'), kwargs


def sfsi(rng, rate):
    kwargs = dict(depth=50, base_channels=8, stem_channels=8,
                  grid_prior_interval=rng.choice((None, 3, 5)),
                  sampling=rng.choice(('stochastic', 'deterministic', 'relu')),
                  sparse_conv3=rng.choice(('dense', 'sampled')))
    model = SFSIResNet(init_cfg=None, **kwargs)
    generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
    for name, module in model.named_modules():
        if name.endswith('_mask'):  # heads that sample about half of the pixels
            module.weight.data.normal_(0, 0.05, generator=generator)
            module.bias.data.fill_(0.0)
    return model, ('masked', 'sparse'), kwargs


def mask_source(rng, rate, **edge_options):
    """CAD's masks: the edge detector on the image (its own), or a random keep ratio."""
    if rate == 'gates':
        return dict(type='EdgeMask', **edge_options)
    return dict(type='RandomMask', keep_ratio=float(rate), seed=rng.randrange(1000))


def cad_resnet(rng, rate):
    kwargs = dict(depth=50, base_output_stride=rng.choice((16, 32)),
                  mask_source=mask_source(rng, rate))
    return CADResNet(init_cfg=None, **kwargs), ('dense', 'sparse'), kwargs


def cad_vgg(rng, rate):
    kwargs = dict(output_stride=rng.choice((1, 2, 4)), base_channels=8,
                  mask_source=mask_source(rng, rate, output_stride=None))
    return CADVGG(**kwargs), ('dense', 'sparse'), kwargs


FAMILIES = [las, sar, sfsi, cad_resnet, cad_vgg]


def build_case(index: int):
    rng = random.Random(SEED * 1000003 + index)
    family = FAMILIES[index % len(FAMILIES)]
    rate = rng.choice(RATES)
    torch.manual_seed(rng.randrange(1 << 30))
    model, modes, kwargs = family(rng, rate)
    randomize_batchnorm_(model, seed=index).eval()
    mixed_gates_(model, rng)
    if rate != 'gates' and family not in (cad_resnet, cad_vgg):
        model.set_forced_activation(rate, seed=index)
    size = (rng.randint(33, 140), rng.randint(33, 140))
    batch = rng.choice((1, 2))
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(index))
    return model, modes, x, f'{family.__name__} {kwargs} rate={rate} x={tuple(x.shape)}'


def relative_l2(got, want):
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


@pytest.mark.slow
@pytest.mark.parametrize('chunk', range(10))
def test_sparse_equals_the_reference_on_random_cases(chunk):
    """Cases ``chunk, chunk + 10, ...`` (ten test ids, so a failure names a small set;
    each message names the case)."""
    for index in range(chunk, CASES, 10):
        model, (reference_mode, sparse_mode), x, description = build_case(index)
        outputs = {}
        for mode in (reference_mode, sparse_mode):
            model.set_execution_mode(mode)
            if isinstance(model, SFSIResNet):  # both modes draw the same samples
                model.set_sampling_seed(index)
            with torch.no_grad():
                outputs[mode] = model(x)
        for want, got in zip(outputs[reference_mode], outputs[sparse_mode]):
            assert got.shape == want.shape, description
            assert relative_l2(got, want) < TOLERANCE, (index, description)
