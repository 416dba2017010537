"""mmdyn: spatially adaptive (dynamic) CNN backbones for MMDetection and MMSegmentation.

The ranges below are what mmdyn supports; CUDA users bring their own torch build.
The Makefile pins the exact CPU stack that `make test` uses (torch 2.13.0 CPU,
mmcv 2.1.0 built with its CPU ops, mmdet 3.3.0, mmseg 1.2.2, mmengine 0.10.7).
"""
from setuptools import find_packages, setup

setup(
    name='mmdyn',
    version='0.1.0',
    description='Spatially adaptive CNN backbones with a true sparse inference path '
                'for MMDetection 3.x and MMSegmentation 1.x',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['mmdyn', 'mmdyn.*']),
    # the native kernels' sources, compiled on the user's machine (make native)
    package_data={'mmdyn.ops.native': ['csrc/*.cpp', 'csrc/*.h']},
    install_requires=[
        'torch>=2.0',
        'numpy',
        'mmengine>=0.10.0,<1.0.0',
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.0.0,<3.4.0',
        'mmsegmentation>=1.0.0,<1.3.0',
        'pycocotools>=2.0.8',
        'opencv-python',
    ],
    extras_require={
        'fixtures': ['scikit-image', 'imgviz'],
        'tests': ['pytest', 'scikit-image', 'imgviz', 'matplotlib'],
    },
)
