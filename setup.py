from setuptools import find_packages, setup

setup(name='mmdyn', version='0.1.0', packages=find_packages(include=['mmdyn', 'mmdyn.*']))
