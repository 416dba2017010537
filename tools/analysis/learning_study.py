"""The learning study: accuracy against executed multiply-adds on the real digits.

    python tools/analysis/learning_study.py [--work-dir work_dirs/learning_study]
        [--methods static las-t03 ...] [--seeds 0 1 2] [--jobs 2] [--epochs 20]
        [--no-train-val] [--cfg-options KEY=VALUE ...]

Run from the repository root. Steps, each skipping what its output already holds (a
rerun resumes after an interruption):

1. writes the digits data set (``data/digits-64``, the configs' ``data_root``) if missing;
2. trains every method x seed with ``tools/train.py`` (``configs/learning_study/``, the
   same schedule and augmentation for all; ``randomness.seed`` = the seed), ``--jobs``
   trainings at a time, the CPU threads split between them;
3. evaluates each checkpoint on the test split (top-1, executed backbone GMACs,
   activation rate, per-stage ink preference: mmdyn/analysis/learning.py);
4. times each method's backbone (the first seed, BatchNorm folded, channels-last, the default
   eval execution) against the static ResNet-18 on one batch of test digits,
   alternating in one process;
5. writes ``study.json``, ``table.md`` (the tables), ``accuracy_vs_gmacs.png`` and mask
   overlays of the first test digits (``overlays/<method>/<block>.png``).

``--cfg-options`` change every method's config alike, in training, evaluation and
timing (e.g. a narrower network for a quick run: ``model.backbone.base_channels=32
model.backbone.stem_channels=32 model.head.in_channels=256``).
"""
import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import mmdyn  # noqa: E402,F401  (registers mmdyn modules, fixes checkpoint loading)
from mmengine.config import DictAction  # noqa: E402
from mmdyn.analysis import learning  # noqa: E402
from mmdyn.datasets.digits_fixture import build_digits_fixture, check_digits_root  # noqa: E402

CONFIGS = ROOT / 'configs' / 'learning_study'
#: name -> (config, family, target)
METHODS = {
    'static': ('resnet18_1xb64-20e_digits-64px.py', 'ResNet-18 (static)', None),
    'las-t03': ('las-r18-s4211-t03_1xb64-20e_digits-64px.py', 'LAS-ResNet-18 S=4-2-1-1', 0.3),
    'las-t05': ('las-r18-s4211-t05_1xb64-20e_digits-64px.py', 'LAS-ResNet-18 S=4-2-1-1', 0.5),
    'las-t07': ('las-r18-s4211-t07_1xb64-20e_digits-64px.py', 'LAS-ResNet-18 S=4-2-1-1', 0.7),
    'sar-t03': ('sar-r18-g2s2a2b1-t03_1xb64-20e_digits-64px.py', 'SAR-ResNet-18 G2s2a2b1', 0.3),
    'sar-t05': ('sar-r18-g2s2a2b1-t05_1xb64-20e_digits-64px.py', 'SAR-ResNet-18 G2s2a2b1', 0.5),
}
DATA_ROOT = ROOT / 'data' / 'digits-64'


def run_options(epochs: int, data_root: Path, train_val: bool = True, extra=None) -> dict:
    """Config overrides that shorten or lengthen the shared schedule consistently and
    point every split at ``data_root``. ``train_val=False`` drops the val-split pass at
    the end of training (validation begins after the last epoch): the study evaluates
    the test split itself, so the pass only adds its line to ``train.log``. ``extra``:
    the user's ``--cfg-options``, applied last."""
    options = {'train_cfg.max_epochs': epochs, 'train_cfg.val_interval': epochs,
               'default_hooks.checkpoint.interval': epochs,
               'param_scheduler.1.T_max': max(epochs - 1, 1)}
    if not train_val:
        options['train_cfg.val_begin'] = epochs + 1
    options.update({f'{split}_dataloader.dataset.data_root': str(data_root)
                    for split in ('train', 'val', 'test')})
    options.update(extra or {})
    return options


def load_config(method: str, epochs: int, data_root: Path = DATA_ROOT, extra=None):
    from mmengine.config import Config
    cfg = Config.fromfile(str(CONFIGS / METHODS[method][0]))
    cfg.merge_from_dict(run_options(epochs, data_root, extra=extra))
    return cfg


def train(method: str, seed: int, run_dir: Path, epochs: int, threads: int,
          data_root: Path = DATA_ROOT, train_val: bool = True, extra=None) -> Path:
    checkpoint = run_dir / f'epoch_{epochs}.pth'
    if checkpoint.exists():
        return checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    options = {**run_options(epochs, data_root, train_val, extra), 'randomness.seed': seed}
    args = [sys.executable, str(ROOT / 'tools' / 'train.py'), str(CONFIGS / METHODS[method][0]),
            '--work-dir', str(run_dir), '--cfg-options',
            *(f'{key}={value}' for key, value in options.items())]
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': str(threads)}
    with open(run_dir / 'train.log', 'w') as log:
        subprocess.run(args, cwd=ROOT, check=True, env=env, stdout=log,
                       stderr=subprocess.STDOUT)
    if not checkpoint.exists():
        raise RuntimeError(f'training {method} seed {seed} wrote no {checkpoint}')
    return checkpoint


def train_all(runs, work: Path, epochs: int, jobs: int, threads: int, data_root: Path,
              train_val: bool = True, extra=None):
    todo = [(m, s) for m, s in runs
            if not (work / m / f'seed{s}' / f'epoch_{epochs}.pth').exists()]
    print(f'[train] {len(runs) - len(todo)} of {len(runs)} runs already trained; '
          f'{len(todo)} to go, {jobs} at a time, {max(threads // jobs, 1)} thread(s) each')
    start, done = time.time(), [0]

    def one(run):
        method, seed = run
        train(method, seed, work / method / f'seed{seed}', epochs, max(threads // jobs, 1),
              data_root, train_val, extra)
        done[0] += 1
        print(f'[train {done[0]}/{len(todo)}] {method} seed {seed} done '
              f'({time.time() - start:.0f} s elapsed)', flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))


def evaluate_all(runs, work: Path, epochs: int, data_root: Path, extra=None) -> dict:
    results = {}
    for index, (method, seed) in enumerate(runs):
        out = work / method / f'seed{seed}' / 'eval.json'
        if not out.exists():
            cfg = load_config(method, epochs, data_root, extra)
            result = learning.evaluate_classifier(
                cfg, str(work / method / f'seed{seed}' / f'epoch_{epochs}.pth'))
            learning.write_json(str(out), result)
            print(f'[eval {index + 1}/{len(runs)}] {method} seed {seed}: top-1 '
                  f"{result['accuracy']:.1f} %, {result['gmacs']:.4f} GMACs", flush=True)
        results.setdefault(method, []).append(learning.read_json(str(out)))
    return results


def time_methods(methods, work: Path, epochs: int, data_root: Path, threads: int,
                 warmup: int, repeats: int, seed: int, extra=None) -> dict:
    """Backbone latency of every method (run ``seed``) and its ratio to the static one."""
    import torch
    torch.set_num_threads(threads)
    backbones, batch = {}, None
    for method in methods:
        cfg = load_config(method, epochs, data_root, extra)
        model = learning.build_classifier(
            cfg, str(work / method / f'seed{seed}' / f'epoch_{epochs}.pth'))
        if batch is None:
            batch = learning.test_batch(cfg, model)
        backbones[method] = learning.prepare_for_latency(model.backbone)
    seconds = learning.time_backbones(backbones, batch, warmup, repeats)
    static = seconds.get('static')
    return {m: dict(seconds=s, ratio=None if static is None else s / static,
                    batch=int(batch.shape[0]), threads=threads) for m, s in seconds.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/learning_study')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=20, help='training epochs of every run')
    parser.add_argument('--jobs', type=int, default=2, help='trainings run at the same time')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                        help='CPU threads in all (split between the jobs; latency uses them all)')
    parser.add_argument('--data-root', default=str(DATA_ROOT),
                        help='digits data set (written here if it is the default and missing)')
    parser.add_argument('--latency-repeats', type=int, default=5)
    parser.add_argument('--no-latency', action='store_true')
    parser.add_argument('--no-train-val', action='store_true',
                        help='skip the val-split pass at the end of each training (the '
                        'study reports the test split; the pass only logs to train.log)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='overrides of every method\'s config (training, evaluation, '
                        'timing)')
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f'--epochs {args.epochs}: the schedule is one warm-up epoch and a '
                     'cosine over the rest, so it needs at least 2')
    if args.jobs < 1 or args.threads < 1:
        parser.error('--jobs and --threads must be >= 1')
    data_root = Path(args.data_root)
    if not data_root.exists() and data_root.resolve() == DATA_ROOT.resolve():
        build_digits_fixture(str(data_root), size=64)  # the configs' default data_root
    info = check_digits_root(str(data_root))
    if info.get('size') != 64:
        parser.error(f"{data_root} holds {info.get('size')}x{info.get('size')} digits; the "
                     'learning-study configs expect 64x64 (digits_fixture --size 64)')
    work = Path(args.work_dir)
    runs = [(m, s) for m in args.methods for s in args.seeds]
    wall = time.time()
    extra = args.cfg_options
    train_all(runs, work, args.epochs, args.jobs, args.threads, data_root,
              train_val=not args.no_train_val, extra=extra)
    results = evaluate_all(runs, work, args.epochs, data_root, extra)
    rows = [learning.summarize_method(m, results[m], METHODS[m][2]) for m in args.methods]
    latency = {}
    if not args.no_latency:
        latency = time_methods(args.methods, work, args.epochs, data_root, args.threads,
                               warmup=2, repeats=args.latency_repeats, seed=args.seeds[0],
                               extra=extra)
    for method in args.methods:
        if method != 'static':
            learning.save_mask_overlays(
                load_config(method, args.epochs, data_root, extra),
                str(work / method / f'seed{args.seeds[0]}' / f'epoch_{args.epochs}.pth'),
                str(work / 'overlays' / method))
    learning.plot_accuracy_vs_gmacs(rows, str(work / 'accuracy_vs_gmacs.png'),
                                    family_of=lambda m: METHODS[m][1])
    tables = '\n\n'.join([learning.format_table(rows, latency), learning.format_ink_table(rows),
                           learning.format_ink_table(rows, blocks=True)])
    (work / 'table.md').write_text(tables + '\n')
    learning.write_json(str(work / 'study.json'), dict(
        epochs=args.epochs, seeds=args.seeds, rows=rows, latency=latency, runs=results,
        wall_seconds_this_call=time.time() - wall))
    print(tables)
    print(f'written: {work}/study.json, table.md, accuracy_vs_gmacs.png, overlays/')


if __name__ == '__main__':
    main()
