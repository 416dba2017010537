"""Bad-input sweep: every registered dynamic backbone, built with each invalid
argument it documents and a few it does not (negative sizes, NaN rates, strings where
ints go), fails at build time with a ValueError that names the argument, never with
a deep error from mmdet/mmcv/torch. The same for the runtime controls."""
import re

import pytest
from mmengine.registry import MODELS

from backbone_table import BAD_ARGUMENTS

NAN = float('nan')

BUILD_CASES = [(cls, {**base, **bad}, name)
               for cls, (base, cases) in BAD_ARGUMENTS.items() for bad, name in cases]


def case_id(case):
    cls, kwargs, name = case
    shown = ','.join(f'{k}={v!r}' for k, v in kwargs.items())
    return f'{cls.__name__}-{shown}'


def test_every_registered_dynamic_backbone_is_swept():
    from mmdyn.models.backbones import DynamicBackboneMixin
    registered = {cls for cls in MODELS.module_dict.values()
                  if isinstance(cls, type) and issubclass(cls, DynamicBackboneMixin)}
    assert registered == set(BAD_ARGUMENTS), 'add the new backbone to BAD_ARGUMENTS'


@pytest.mark.parametrize('case', BUILD_CASES, ids=[case_id(c) for c in BUILD_CASES])
def test_bad_build_argument_names_itself(case):
    cls, kwargs, name = case
    with pytest.raises(ValueError, match=re.escape(name)):
        cls(init_cfg=None, **kwargs)


@pytest.mark.parametrize('cls', list(BAD_ARGUMENTS), ids=lambda c: c.__name__)
def test_valid_base_arguments_build(cls):
    """The sweep's base arguments are valid, so every failure above is the bad one."""
    base, _ = BAD_ARGUMENTS[cls]
    cls(init_cfg=None, **base)


CONTROLS = [
    ('set_temperature', (0.0,), 'temperature'), ('set_temperature', (NAN,), 'temperature'),
    ('set_temperature', (-1.0,), 'temperature'), ('set_temperature', ('1',), 'temperature'),
    ('set_execution_mode', ('fast',), 'execution_mode'),
    ('set_forced_activation', (NAN,), 'rate'), ('set_forced_activation', (1.5,), 'rate'),
    ('set_forced_activation', (-0.1,), 'rate'), ('set_forced_activation', ('0.5',), 'rate'),
]


@pytest.fixture(scope='module')
def built():
    return {cls: cls(init_cfg=None, **base) for cls, (base, _) in BAD_ARGUMENTS.items()}


@pytest.mark.parametrize('cls', list(BAD_ARGUMENTS), ids=lambda c: c.__name__)
@pytest.mark.parametrize('control', CONTROLS, ids=lambda c: f'{c[0]}{c[1]!r}')
def test_bad_control_value_names_itself(built, cls, control):
    method, args, name = control
    model = built[cls]
    with pytest.raises(ValueError, match=name):
        getattr(model, method)(*args)


@pytest.mark.parametrize('cls', [c for c in BAD_ARGUMENTS if c.__name__ != 'CADVGG'],
                         ids=lambda c: c.__name__)
def test_a_misspelt_argument_is_reported_by_the_backbone_with_the_closest_name(cls):
    """mmdet's ResNet would report ``ResNet.__init__() got an unexpected keyword
    argument``: the user wrote the dynamic backbone's name in the config."""
    base, _ = BAD_ARGUMENTS[cls]
    with pytest.raises(TypeError, match=rf"^{cls.__name__} got an unexpected argument "
                                        r"'frozen_stage' \(did you mean 'frozen_stages'\?\)"):
        cls(init_cfg=None, **base, frozen_stage=1)


def test_a_tool_reports_a_bad_config_in_one_line_and_debug_shows_the_traceback(tmp_path):
    """tools/train.py with a bad backbone argument: exit status 1, the last line names
    the problem, no traceback through mmengine; ``--debug`` gives the traceback."""
    import subprocess
    import sys

    from e2e_helpers import ROOT
    command = [sys.executable, 'tools/train.py',
               'configs/las_resnet/faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py',
               '--work-dir', str(tmp_path), '--cfg-options', 'model.backbone.init_cfg=None',
               'model.backbone.granularity=(4,4,0,1)']
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr[-2000:]
    assert last.startswith('train.py: error: ValueError: ') and 'granularity[2]=0' in last
    assert 'Traceback' not in result.stderr
    debug = subprocess.run(command + ['--debug'], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert debug.returncode == 1 and 'Traceback' in debug.stderr


def test_a_cfg_option_into_a_list_by_name_says_how_to_address_the_item():
    """``test_evaluator`` is a list in the shipped detection configs: mmengine would
    fail with 'list indices must be integers or slices, not str'."""
    from types import SimpleNamespace

    from e2e_helpers import ROOT
    from mmdyn.utils import load_config
    args = SimpleNamespace(
        config=str(ROOT / 'configs/las_resnet/faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py'),
        local_rank=0, fixture=None, cfg_options={'test_evaluator.ann_file': 'x.json'})
    with pytest.raises(ValueError, match=r'test_evaluator is a list; address its items by '
                                         r'index: test_evaluator\.0 \(CocoMetric\), '
                                         r'test_evaluator\.1 \(SparsityMetric\)'):
        load_config(args)
    args.cfg_options = {'test_evaluator.0.ann_file': 'x.json'}
    assert load_config(args).test_evaluator[0]['ann_file'] == 'x.json'
