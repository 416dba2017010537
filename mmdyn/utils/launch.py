"""Runner construction shared by tools/train.py and tools/test.py.

On a machine without CUDA, ``--launcher pytorch`` (torchrun) uses the gloo backend:
mmengine 0.10.7 would call ``torch.cuda.set_device`` and wrap the model in DDP with
``device_ids=[LOCAL_RANK]``, both of which fail on CPU.
"""
import os
import os.path as osp
import sys

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


DEBUG_FLAG = '--debug'


def run_tool(main):
    """Run a tool's ``main()``. An error (a bad config value, a missing file) ends it
    with one line naming the problem and exit status 1, not a traceback through
    mmengine and mmdet; ``--debug`` shows the full traceback."""
    if DEBUG_FLAG in sys.argv[1:]:
        return main()
    try:
        return main()
    except Exception as error:  # noqa: BLE001 - every error gets its one line
        message = ' '.join(str(error).split()) or '(no message)'
        print(f'{osp.basename(sys.argv[0])}: error: {type(error).__name__}: {message} '
              f'({DEBUG_FLAG} for the traceback)', file=sys.stderr)
        sys.exit(1)


#: metrics that compute nothing (and only log an error) when the model predicted
#: nothing, with the prefix of the keys they return otherwise
_DETECTION_METRICS = {'CocoMetric': 'coco', 'VOCMetric': 'pascal_voc'}


def last_validation_metrics(runner) -> dict:
    """The metrics of the last validation of a training run (as the message hub keeps
    them, without their ``val/`` prefix)."""
    return {key[len('val/'):]: value for key, value in runner.message_hub.log_scalars.items()
            if key.startswith('val/')}


def check_metrics_computed(evaluators, metrics: dict):
    """Raise when a detection metric returned nothing: mmdet's ``CocoMetric`` logs "The
    testing results of the whole dataset is empty" and returns no mAP when the model
    detected nothing on the whole set, and the run would otherwise end as a success."""
    evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
    for evaluator in evaluators:
        prefix = _DETECTION_METRICS.get(evaluator.get('type'))
        if prefix is None:
            continue
        prefix = evaluator.get('prefix') or prefix
        if not any(key.startswith(f'{prefix}/') for key in metrics or {}):
            raise RuntimeError(
                f'{evaluator["type"]} computed no metric: the model detected nothing on '
                'the whole evaluation set, so mAP is undefined (an untrained or diverged '
                'model, or a score threshold above every score)')


def add_debug_arg(parser):
    """The ``--debug`` flag that :func:`run_tool` reads."""
    parser.add_argument(DEBUG_FLAG, action='store_true',
                        help='on an error, the full traceback instead of one line')


def add_common_args(parser):
    """Arguments shared by tools/train.py and tools/test.py (after ``config``)."""
    parser.add_argument('--work-dir', help='directory for logs and checkpoints')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_debug_arg(parser)
    parser.add_argument('--fixture', choices=['coco', 'voc', 'cityscapes', 'digits'],
                        help='run the config on an offline fixture (built under '
                        'data/fixtures/NAME if missing): small images, a few iterations, '
                        'no downloaded weights (mmdyn.datasets.fixture_configs)')
    parser.add_argument('--fixture-iters', type=int, default=2,
                        help='iterations of a --fixture run (default 2)')


def load_config(args) -> Config:
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    if getattr(args, 'fixture', None):
        from mmdyn.datasets.fixture_configs import apply_fixture
        apply_fixture(cfg, args.fixture, iters=args.fixture_iters)
    if args.cfg_options:
        for key in args.cfg_options:
            check_option_path(cfg, key)
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def check_option_path(cfg, key: str):
    """A ``--cfg-options`` key that walks into a list by name (``test_evaluator.ann_file``
    when ``test_evaluator`` is a list of evaluators) is an error that says how to address
    the item; mmengine would fail with 'list indices must be integers'."""
    node, walked = cfg, []
    for part in key.split('.'):
        walked.append(part)
        if isinstance(node, (list, tuple)):
            if not part.isdigit():
                items = ', '.join(f'{".".join(walked[:-1])}.{k}' + (
                    f" ({item.get('type')})" if isinstance(item, dict) else '')
                    for k, item in enumerate(node))
                raise ValueError(f'--cfg-options {key}: {".".join(walked[:-1])} is a list; '
                                 f'address its items by index: {items}')
            node = node[int(part)] if int(part) < len(node) else None
        elif hasattr(node, 'get'):  # a dict, ConfigDict or the Config itself
            node = node.get(part)
        else:
            return
        if node is None:
            return


def resolve_checkpoint(path: str, allow_none: bool = False):
    """A local checkpoint path, or None for ``'none'`` (random init) when allowed;
    exits with a clear message when the file does not exist."""
    if allow_none and path == 'none':
        return None
    if not os.path.isfile(path):
        raise SystemExit(f'checkpoint not found: {path}')
    return path


def build_runner(cfg, config_path: str, work_dir=None, launcher: str = 'none'):
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    if launcher != 'none' and not torch.cuda.is_available():
        _use_gloo_on_cpu(cfg)
    return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)


def finish_distributed():
    """Tear the process group down before the interpreter exits: left to exit-time
    destructors, gloo's worker threads can abort a rank ("terminate called without
    an active exception") after all work has finished."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _use_gloo_on_cpu(cfg):
    if cfg.launcher != 'pytorch':
        raise ValueError(f'--launcher {cfg.launcher} needs CUDA; on CPU use torchrun '
                         '(tools/dist_train.sh, --launcher pytorch)')
    if not dist.is_initialized():  # torchrun's env:// variables
        dist.init_process_group(backend='gloo')
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper['device_ids'] = None  # CPU modules take no device ids
    cfg.model_wrapper_cfg = wrapper

