# Shared by every ITD-ResNet config (inference-time-dynamic convolution attributes, "The
# Untapped Potential of Off-the-Shelf CNNs", 2021): import mmdyn (registers its modules in
# mmengine's root registries, found from the mmdet, mmseg and mmpretrain scopes).
# ITD-ResNet has no trainable gate: no sparsity loss, no temperature, no target schedule.
# SparsityMetric reports the backbone MACs of the permutation used (executed) against the
# default permutation (dense).
custom_imports = dict(imports=['mmdyn'], allow_failed_imports=False)
custom_hooks = []
