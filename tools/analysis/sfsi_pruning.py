"""Pruning compatibility of SFSI-ResNet (appendix Table 4): global unstructured L1
pruning of the backbone convolutions (``torch.nn.utils.prune.global_unstructured``;
SFSI's mask heads and the DCN offset convs are left alone) at several ratios, then
backbone parameters (non-zero), executed backbone GFLOPs and the task metric, for a
dense and an SFSI model.

    python tools/analysis/sfsi_pruning.py --model dense DENSE_CONFIG DENSE_CKPT \
        --model sfsi SFSI_CONFIG SFSI_CKPT [--ratios 0 0.3 0.5 0.7] [--out-dir DIR]

Checkpoints may be ``none`` (random init). GFLOPs are reported for Dyn* models (from
SparsityMetric: the sampled pixels, pruned weights still counted); writes
``pruning.json`` and prints the table.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import mmdyn  # noqa: E402,F401
from mmdyn.analysis.sfsi import format_rows, pruning_study  # noqa: E402
from mmdyn.utils import resolve_checkpoint  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', nargs=3, action='append', required=True,
                        metavar=('LABEL', 'CONFIG', 'CHECKPOINT'))
    parser.add_argument('--ratios', type=float, nargs='+', default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument('--out-dir', default='work_dirs/sfsi_pruning')
    args = parser.parse_args()
    bad = [r for r in args.ratios if not 0.0 <= r < 1.0]
    if bad:
        parser.error(f'--ratios must lie in [0, 1), got {bad}')
    return args


def main():
    args = parse_args()
    models = [(label, config, resolve_checkpoint(ckpt, allow_none=True))
              for label, config, ckpt in args.model]
    rows = pruning_study(models, args.ratios, os.path.join(args.out_dir, 'runs'))
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, 'pruning.json')
    with open(out, 'w') as f:
        json.dump(dict(models=args.model, rows=rows), f, indent=2)
    print(format_rows(rows, [('model', 'model'), ('ratio', 'ratio'),
                             ('backbone_params_m', 'params (M)'),
                             ('backbone_nonzero_params_m', 'non-zero (M)'),
                             ('backbone_gflops', 'GFLOPs'), ('metric', 'metric'),
                             ('value', 'value')]))
    print(f'saved {out}')


if __name__ == '__main__':
    main()
