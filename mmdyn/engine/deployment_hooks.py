"""Deployment steps applied to the model right before testing."""
from mmcv.cnn import fuse_conv_bn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class FuseConvBNHook(Hook):
    """Fold every BatchNorm into the conv before it (mmcv's ``fuse_conv_bn``, the
    ``--fuse-conv-bn`` step of mmdet 2.x's test tool) once the checkpoint is loaded:
    ``before_test`` runs after the runner loaded ``load_from``. Every mmdyn backbone
    gives the same outputs in every execution mode after the fold."""
    priority = 'VERY_HIGH'

    def before_test(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        fuse_conv_bn(model)
