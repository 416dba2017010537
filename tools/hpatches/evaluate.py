"""HPatches MMA (D2-Net protocol) for methods by name and/or feature files.

    python tools/hpatches/evaluate.py --root hpatches-sequences-release \
        --methods sift d2net-os8 d2net-os1 cad-os1-25-51-51 --out-dir work_dirs/hpatches
    python tools/hpatches/evaluate.py --root DIR --extensions d2-net cad-os1 --out-dir DIR

Prints the MMA@1..10 table with the descriptor network's multiply-adds per image and
writes ``results.json``, ``mma_curves.png`` (MMA against threshold per method) and
``mma3_vs_macs.png`` (MMA@3 against multiply-adds, as the CAD paper's Fig. 6).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

import mmdyn  # noqa: E402,F401
from mmdyn.analysis.cad_vgg import (evaluate_methods, format_table, plot_mma_curves,  # noqa: E402
                                    plot_mma_vs_macs)
from mmdyn.datasets.hpatches import EXCLUDED_SEQUENCES  # noqa: E402
from mmdyn.models.keypoints import NAME_HELP  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', required=True, help='hpatches-sequences-release folder')
    parser.add_argument('--methods', nargs='*', default=[], help=NAME_HELP)
    parser.add_argument('--extensions', nargs='*', default=[],
                        help='feature files <image>.<ext> from extract_features.py')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--checkpoint', default='hed')
    parser.add_argument('--num-keypoints', type=int, default=512)
    parser.add_argument('--keep-high-res', action='store_true',
                        help=f'do not drop the 8 high-resolution sequences {EXCLUDED_SEQUENCES}')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    if not args.methods and not args.extensions:
        raise SystemExit('give --methods and/or --extensions')
    try:
        results = evaluate_methods(args.root, args.methods, args.extensions, args.checkpoint,
                                   args.num_keypoints, progress=not args.no_progress,
                                   exclude=() if args.keep_high_res else None)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err))
    os.makedirs(args.out_dir, exist_ok=True)
    table = format_table(results)
    print(table)
    with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out_dir, 'results.md'), 'w') as f:
        f.write(table + '\n')
    plot_mma_curves(results, os.path.join(args.out_dir, 'mma_curves.png'))
    plot_mma_vs_macs(results, os.path.join(args.out_dir, 'mma3_vs_macs.png'))
    print(f'wrote {args.out_dir}/results.json, results.md, mma_curves.png, mma3_vs_macs.png')


if __name__ == '__main__':
    main()
