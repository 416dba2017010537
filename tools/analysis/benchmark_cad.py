"""Latency and multiply-adds of CAD-ResNet against the strided and dilated ResNets.

CAD-ResNet (output stride ``--base-os`` -> 8) with edge masks at several thresholds
(and random masks at given keep ratios) is compared with mmseg's ResNetV1c at output
stride 16 (or 32; strided) and 8 (dilated), all with the same weights, BatchNorm folded,
channels-last, on real photos from ``skimage.data`` resized to the input size and
normalised as mmseg's data preprocessor does. Whole-backbone forwards of all networks
alternate in one process; each number is the median of ``--repeats`` after
``--warmup``. For every mask it prints latency, multiply-adds, the share of blocks kept
at full resolution, and the latency interpolated between the strided and the dilated
network by multiply-adds, then saves JSON.

    python tools/analysis/benchmark_cad.py --depth 101 --input 512 1024
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from mmcv.cnn import fuse_conv_bn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis import (keep_freed_memory, prepare_dense_for_timing,  # noqa: E402
                            time_alternating)
from mmdyn.analysis.complexity import dense_part_flops  # noqa: E402
from mmdyn.models.backbones import CADResNet  # noqa: E402

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=101)
    parser.add_argument('--base-os', type=int, default=16, choices=(16, 32))
    parser.add_argument('--thresholds', type=float, nargs='+', default=[0.35, 0.95, 1.5])
    parser.add_argument('--edge-dilation', type=int, default=11)
    parser.add_argument('--random-keep', type=float, nargs='*', default=[0.3])
    parser.add_argument('--input', type=int, nargs=2, default=[512, 1024], metavar=('H', 'W'))
    parser.add_argument('--image', default='coffee', help='a skimage.data image name')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', default=None)
    return parser.parse_args()


def photo(name: str, height: int, width: int) -> torch.Tensor:
    from skimage import data
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = cv2.resize(image[..., :3], (width, height), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def build(args):
    from mmseg.models.backbones import ResNetV1c
    cad = CADResNet(args.depth, base_output_stride=args.base_os, init_cfg=None,
                    mask_source=dict(type='FullResolutionMask'))
    strided_layout = dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)) \
        if args.base_os == 16 else dict(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))
    nets = {}
    for name, layout in ((f'OS{args.base_os}', strided_layout),
                         ('OS8', dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)))):
        net = ResNetV1c(depth=args.depth, contract_dilation=True, **layout)
        net.load_state_dict(cad.state_dict(), strict=True)
        nets[name] = net
    flops = {name: sum(dense_part_flops(net, args.input).values()) for name, net in nets.items()}
    nets = {name: prepare_dense_for_timing(net) for name, net in nets.items()}
    cad.eval()
    cad.set_execution_mode('sparse')
    cad = fuse_conv_bn(cad).to(memory_format=torch.channels_last)
    return nets, flops, cad


def mask_sources(args):
    sources = {f'edge thr={t:g}': dict(type='EdgeMask', threshold=t, dilation=args.edge_dilation)
               for t in args.thresholds}
    sources.update({f'random keep={k:g}': dict(type='RandomMask', keep_ratio=k)
                    for k in args.random_keep})
    return sources


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()
    torch.manual_seed(0)
    x = photo(args.image, *args.input)
    nets, flops, cad = build(args)
    from mmengine.registry import MODELS
    models = dict(nets)
    cads = {}
    for label, source in mask_sources(args).items():
        model = copy.deepcopy(cad)
        model.mask_source = MODELS.build(source)
        cads[label] = model
        models[f'CAD {label}'] = model
    with torch.no_grad():
        latency = time_alternating({name: (lambda m=m: m(x)) for name, m in models.items()},
                                   args.warmup, args.repeats)
    coarse, fine = f'OS{args.base_os}', 'OS8'
    print(f'CAD-ResNet-{args.depth} (OS {args.base_os} -> 8), input 1x3x{args.input[0]}x'
          f'{args.input[1]} ({args.image}), {args.threads} threads, median of {args.repeats}')
    print(f'{"network":>22} {"GMACs":>8} {"ms":>8} {"kept":>6} {"interp ms":>10} {"ratio":>6}')
    rows = []
    for name in (coarse, fine):
        rows.append(dict(network=name, gmacs=flops[name] / 1e9, latency_s=latency[name]))
        print(f'{name:>22} {flops[name] / 1e9:8.2f} {latency[name] * 1e3:8.1f}')
    for label, model in cads.items():
        with torch.no_grad():
            model(x)
        record = model.records
        macs = float(record.executed_flops[0])
        kept = float(torch.stack([b.mask.float().mean() for b in record.blocks
                                  if b.mask is not None]).mean())
        share = (macs - flops[coarse]) / (flops[fine] - flops[coarse])
        interp = latency[coarse] + share * (latency[fine] - latency[coarse])
        t = latency[f'CAD {label}']
        rows.append(dict(network=f'CAD {label}', gmacs=macs / 1e9, latency_s=t,
                         kept_fraction=kept, interpolated_latency_s=interp,
                         latency_over_interpolated=t / interp,
                         faster_than_dilated=t < latency[fine]))
        print(f'{"CAD " + label:>22} {macs / 1e9:8.2f} {t * 1e3:8.1f} {kept:6.2f} '
              f'{interp * 1e3:10.1f} {t / interp:6.3f}')
    out = args.out or os.path.join('work_dirs', 'benchmark_cad',
                                   f'cad-r{args.depth}-os{args.base_os}-t{args.threads}.json')
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(dict(config=vars(args), torch=torch.__version__, rows=rows), f, indent=2)
    print(f'saved {out}')


if __name__ == '__main__':
    main()
