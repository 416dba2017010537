# The static reference of the learning study: mmpretrain's own ResNet-18 (an
# implementation independent of mmdyn) with the study's schedule and augmentation.
_base_ = ['../_base_/digits_study.py']
custom_imports = dict(imports=['mmdyn'], allow_failed_imports=False)
