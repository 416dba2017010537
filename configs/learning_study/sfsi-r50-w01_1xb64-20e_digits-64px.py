# SFSI-ResNet-50 (Xie et al., ECCV 2020) as a digits classifier, to show that it builds and
# trains inside mmpretrain's ImageClassifier like the other dynamic backbones. Not part of
# the default learning study (ResNet-18 family; SFSI has Bottleneck depths 50/101 only):
# run it with --cfg-options or tools/train.py. Grid prior every 11th position, no DCN,
# per-block sparse loss with weight 0.1 (the paper's middle segmentation weight),
# temperature 1 -> 0.01.
_base_ = ['../_base_/digits_study.py', '../_base_/sfsi_runtime.py']
model = dict(
    type='DynImageClassifier',
    backbone=dict(_delete_=True, type='SFSIResNet', depth=50, out_indices=(3, ),
                  init_cfg=None),
    head=dict(in_channels=2048),
    sparsity_loss=dict(type='SFSISparseLoss', loss_weight=0.1))
val_evaluator = [dict(type='Accuracy', topk=(1, )), dict(type='SparsityMetric', per_block=False)]
test_evaluator = val_evaluator
