"""LASNet's Table 1 on this CPU: one LAS bottleneck with each fusion and each kernel
choice switched off.

One block of LAS-ResNet-101 (by default the second block of stage 1 at 800 x 1216: a
200 x 304 map, 256 -> 64 -> 256 channels) on its sparse executor (the dense-route
fallback off), BatchNorm folded, channels-last, masks forced to ``--rate``, at each
patch size of ``--sizes``; every variant and the static block (the dense bottleneck of
the static twin) alternate in one process, each figure the median of ``--repeats``
calls on a fresh copy of the input. Variants:

- ``mmdyn``: as shipped (masker fused with conv1, conv3 fused into the scatter-add,
  kernels chosen by measurement);
- ``masker separate``: conv1 and the masker as two products (Sec. 3.4 without the
  fusion: the gate's 1x1 conv reads the input a second time);
- ``conv3 separate``: conv3 on the patch stack as its own GEMM, then a plain
  scatter-add of its output (no accumulation onto the gathered residual rows);
- ``no fusion``: both of the above;
- ``kernels: portable``: every product pinned to its portable candidate (MKL's addmm,
  the PyTorch gather), the choice by measurement off;
- ``gemm: <candidate>`` / ``gemm_acc: <candidate>``: one op pinned to one candidate;
- ``window_groups: <candidate>``: conv2's way, the row of the paper's table on the
  gather: ``from_map`` fuses the window gather into conv2 (tap rows read straight
  from conv1's map by the native gather-GEMM), ``group_by_group`` gathers the windows
  into a stack and convolves it, ``one_product`` gathers them as rows of one table
  multiplied in one gather-GEMM. ::

    python tools/analysis/las_ablation.py --sizes 4 8 --rate 0.6 --threads 2
"""
import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.latency.accuracy import route_policy, stage_blocks  # noqa: E402
from mmdyn.latency.machine import environment_variable  # noqa: E402
from mmdyn.models.backbones import LASResNet  # noqa: E402
from mmdyn.ops import gather_windows, gemm, pixel_rows, scatter_add_patches  # noqa: E402
from mmdyn.ops.kernel_choice import CHOOSER, ENV_PINS  # noqa: E402


def separate_masker(block):
    """conv1 and the gate's 1x1 conv as two products (no C+1 fused GEMM)."""
    fused = block.fused_conv1_gate()
    conv1 = block.folded('conv1', block.conv1, block.norm1)
    gate_weight, gate_bias = fused.weight[-1:], fused.bias[-1:]

    def two_products(self):
        def run(x):
            out1 = conv1(x)
            gate = F.conv2d(x, gate_weight, gate_bias)
            return torch.cat([out1, gate], dim=1)  # the executor slices it as before
        return run
    return two_products


def separate_conv3(block):
    """conv3 as its own GEMM on the patch stack, then a plain scatter-add."""
    conv3 = block.folded('conv3', block.conv3, block.norm3)

    def residual(self, x, out1, identity, index, grid):
        if index.numel() == 0:
            return self.sparse_output(x, identity, None, index, grid)
        windows = gather_windows(out1, index, self.conv2_window).relu_()
        hidden = self.folded('conv2', self.conv2, self.norm2)(windows, valid=True).relu_()
        rows = gemm(pixel_rows(hidden), conv3.matrix, conv3.bias)
        patches = rows.view(*hidden.shape[:1], *hidden.shape[2:], -1).permute(0, 3, 1, 2)
        reuse = self.may_overwrite(x, identity)
        return scatter_add_patches(identity, patches, index, grid, relu=True, inplace=reuse)
    return residual


def variant_blocks(block):
    """``{name: (prepare, pins)}``: ``prepare(block)`` patches the block for the variant
    (and returns an undo), ``pins`` the ``MMDYN_KERNELS`` value timed with it."""
    def patch(**methods):
        def prepare(b):
            made = {name: types.MethodType(make(b), b) for name, make in methods.items()}
            b.__dict__.update(made)
            return lambda: [b.__dict__.pop(name) for name in made]
        return prepare

    def nothing(b):
        return lambda: None
    out = {'mmdyn': (nothing, ''),
           'masker separate': (patch(fused_conv1_gate=separate_masker), ''),
           'conv3 separate': (patch(_residual_sparse=separate_conv3), ''),
           'no fusion': (patch(fused_conv1_gate=separate_masker,
                               _residual_sparse=separate_conv3), ''),
           'kernels: portable': (nothing, ','.join(f'{name}={op.portable}'
                                                   for name, op in CHOOSER.ops.items()))}
    for op in ('gemm', 'gemm_acc', 'window_groups'):
        for candidate in CHOOSER.ops[op].candidates:
            out[f'{op}: {candidate}'] = (nothing, f'{op}={candidate}')
    return out


def time_variant(block, static, x, name, variants, step, reference) -> float:
    """Seconds of one call of the static block or of ``block`` as variant ``name``; on
    the first step every variant's output is checked against the shipped executor's
    (``reference``: filled by the ``'mmdyn'`` variant)."""
    if name == 'static':
        start = time.perf_counter()
        static(x)
        return time.perf_counter() - start
    prepare, pins = variants[name]
    undo = prepare(block)
    os.environ[ENV_PINS] = pins
    fresh = x.clone(memory_format=torch.channels_last)
    try:
        start = time.perf_counter()
        out = block(fresh)
        seconds = time.perf_counter() - start
    finally:
        undo()
    if step == 0 and name == 'mmdyn':
        reference.append(out.clone())
    elif step == 0:  # every variant computes the same block
        err = float((out - reference[0]).norm() / reference[0].norm())
        if err > 1e-4:
            raise AssertionError(f'variant {name!r} differs from the executor: {err:.2e}')
    return seconds


def measure(size: int, rate: float, input_hw, repeats: int, warmup: int, stage: int,
            block_index: int):
    torch.manual_seed(0)
    backbone = LASResNet(101, granularity=(size, ) * 4, init_cfg=None)
    twin = backbone.static_twin()
    backbone.prepare_for_timing()
    block = getattr(backbone, f'layer{stage + 1}')[block_index]
    static = getattr(twin, f'layer{stage + 1}')[block_index]
    block.forced_rate, block.forced_seed = rate, 0
    _, cin, mid, cout, h, w = stage_blocks(101, input_hw, block_index)[stage]
    x = torch.rand(1, cin, h, w).contiguous(memory_format=torch.channels_last)
    variants = variant_blocks(block)
    times = {name: [] for name in ['static', *variants]}
    reference = []
    # each variant sets its kernel pins (time_variant); the user's come back afterwards
    with torch.no_grad(), route_policy('never'), environment_variable(ENV_PINS, ''):
        for step in range(warmup + repeats):
            for name in times:
                seconds = time_variant(block, static, x, name, variants, step, reference)
                if step >= warmup:
                    times[name].append(seconds)
    patches = int(block.record.mask.sum())
    return dict(S=size, rate=rate, patches=patches, cells=int(block.record.mask.numel()),
                shape=dict(cin=cin, mid=mid, cout=cout, h=h, w=w),
                ms={name: statistics.median(t) * 1e3 for name, t in times.items()})


def table(results) -> str:
    names = list(results[0]['ms'])
    lines = ['| variant | ' + ' | '.join(f'S = {r["S"]} ms (vs mmdyn)' for r in results) + ' |',
             '|---|' + '---|' * len(results)]
    for name in names:
        cells = [f'{r["ms"][name]:.2f} ({r["ms"][name] / r["ms"]["mmdyn"]:.2f}x)'
                 for r in results]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 2)[2])
    parser.add_argument('--sizes', type=int, nargs='+', default=[4, 8])
    parser.add_argument('--rate', type=float, default=0.6)
    parser.add_argument('--input', type=int, nargs=2, default=[800, 1216])
    parser.add_argument('--stage', type=int, default=1, help='1-based stage')
    parser.add_argument('--block-index', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--out', default='work_dirs/las_ablation.json')
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1:
        raise ValueError(f'--rate must be in (0, 1], got {args.rate}')
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = [measure(S, args.rate, tuple(args.input), args.repeats, args.warmup,
                           args.stage - 1, args.block_index) for S in args.sizes]
    finally:
        torch.set_num_threads(threads)
    print(f'LAS-ResNet-101 stage {args.stage} block {args.block_index}, input '
          f'{args.input[0]}x{args.input[1]}, r = {args.rate}, {args.threads} thread(s), '
          f'median of {args.repeats}')
    print(table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(settings=vars(args), results=results), indent=1))
    return results


if __name__ == '__main__':
    torch.set_flush_denormal(True)  # denormals slow x86 CPUs by orders of magnitude
    main()
