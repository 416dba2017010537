# As itd-r50_1xb64-8e_digits-32px.py with ITD-ResNet-18 (BasicBlocks: the strided 3x3 conv of
# each stage's first block, conv1, is the dynamic one). The measured digits numbers in
# docs/itd_resnet.md use this depth: on the shared 2-core CPU a ResNet-50 oracle over
# 6 x 81 permutations did not fit the session.
_base_ = './itd-r50_1xb64-8e_digits-32px.py'
model = dict(backbone=dict(depth=18), head=dict(in_channels=512))
