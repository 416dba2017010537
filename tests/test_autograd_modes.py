"""Every backbone, in each execution mode, called in turn under torch.inference_mode
(deployments, benchmarks), torch.no_grad (mmengine's test loop) and with gradients on
(an eval-mode forward in a training script): caches and reused storage made in one
mode must serve the others (an inference tensor has no version counter and cannot be
written outside inference mode)."""
import pytest
import torch

from backbone_table import BLOCK_VARIANTS, CASES
from mmdyn.models.backbones.dense_fallback import ENV_POLICY
from mmdyn.ops.kernel_choice import ENV_PINS

MODES = [('inference', torch.inference_mode), ('no_grad', torch.no_grad),
         ('grad', torch.enable_grad), ('inference', torch.inference_mode)]


#: kernels whose weights are derived once and cached: plain (transposed) and prepacked
PLAIN = 'gemm=conv1x1,gemm_acc=conv1x1,gemm_into=conv1x1,gather_gemm=native_onednn'
PACKED = ('gemm=conv1x1_packed,gemm_acc=conv1x1_add_packed,gemm_into=conv1x1_add_packed,'
          'gather_gemm=native_onednn_packed,dense_conv=conv_packed')


@pytest.mark.parametrize('case', CASES + BLOCK_VARIANTS, ids=lambda c: c.name)
@pytest.mark.parametrize('fallback, kernels', [('measured', ''), ('always', PLAIN),
                                               ('always', PACKED)],
                         ids=['measured', 'dense-routes-plain', 'dense-routes-packed'])
def test_every_backbone_runs_in_every_autograd_mode_in_turn(case, fallback, kernels,
                                                            monkeypatch):
    """``fallback='always'``: the dense routes as well, wherever the measured
    crossovers of this machine would not take them; ``kernels``: each kernel whose
    weights are cached, wherever this machine's measurements would not pick it (a pin
    falls back to the portable kernel where its candidate does not serve the tensor)."""
    monkeypatch.setenv(ENV_POLICY, fallback)
    monkeypatch.setenv(ENV_PINS, kernels)
    model = case.build()
    x = case.input(batch=2)
    for execution_mode in case.modes:
        model.set_execution_mode(execution_mode)
        outputs = []
        for _, grad_mode in MODES:
            with grad_mode():
                out = model(x)
            outputs.append([o.detach().clone() for o in out])
        for name_out, (name, _) in zip(outputs[1:], MODES[1:]):
            for got, want in zip(name_out, outputs[0]):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5,
                                           msg=f'{execution_mode} under {name}')
