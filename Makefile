# The two entry points: `make demo` (the main job) and `make test`. Each creates the virtual
# environments it needs and installs into them; torch and torchvision are pinned to the releases
# on this machine's disk. The other frameworks get environments of their own (.venv-jax,
# .venv-tf, .venv-mxnet), since their pins conflict (MXNet needs numpy < 1.24).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
QUIET_PIP := 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: demo test test-torch test-triton test-jax test-tf test-mxnet lint install cpu-kernels bench \
	bench-gpu bench-frameworks clean darknet-oracle

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 \
		-e '.[test,bench]' $(QUIET_PIP)
	KERAS_BACKEND=torch $(PY) -c "import diagonalwise, torchvision, pytest, hypothesis, keras"
	touch $@

# Our C++ CPU kernels, compiled for this machine into ~/.cache/diagonalwise/build (about a
# minute the first time; nothing when built already). Where no compiler is available the
# 'cpu_direct' algorithm reports itself unavailable and everything else works; a failed build
# where a compiler is present stops here (else its tests would only be skipped).
cpu-kernels: $(INSTALLED)
	@$(PY) -c "import shutil, sys, time; from diagonalwise.kernels.cpu_ops import \
	cpu_kernels_unavailable as u, build_directory as d; t = time.time(); r = u(); \
	print(f'cpu_direct kernels: {r}' if r else f'cpu_direct kernels ready in {d()} ({time.time() - t:.0f} s)'); \
	sys.exit(1 if r and shutil.which('c++') else 0)"

.venv-jax/.installed: pyproject.toml
	test -x .venv-jax/bin/python || $(PYTHON) -m venv .venv-jax
	.venv-jax/bin/pip install -q --disable-pip-version-check 'jax>=0.4.30' 'flax>=0.10' optax \
		'keras>=3.5' pytest numpy h5py $(QUIET_PIP)
	.venv-jax/bin/pip install -q --disable-pip-version-check --no-deps -e . $(QUIET_PIP)
	KERAS_BACKEND=jax .venv-jax/bin/python -c "import diagonalwise.jax, diagonalwise.flax, keras"
	touch $@

.venv-tf/.installed: pyproject.toml
	test -x .venv-tf/bin/python || $(PYTHON) -m venv .venv-tf
	.venv-tf/bin/pip install -q --disable-pip-version-check tensorflow-cpu 'keras>=3.5' pytest \
		numpy h5py $(QUIET_PIP)
	.venv-tf/bin/pip install -q --disable-pip-version-check --no-deps -e . $(QUIET_PIP)
	.venv-tf/bin/python -c "import tensorflow, keras"
	touch $@

.venv-mxnet/.installed: pyproject.toml
	test -x .venv-mxnet/bin/python || $(PYTHON) -m venv .venv-mxnet
	.venv-mxnet/bin/pip install -q --disable-pip-version-check mxnet==1.9.1 'numpy<1.24' pytest \
		$(QUIET_PIP)
	.venv-mxnet/bin/pip install -q --disable-pip-version-check --no-deps -e . $(QUIET_PIP)
	.venv-mxnet/bin/python -c "import mxnet, diagonalwise.mxnet"
	touch $@

install: $(INSTALLED)

# The paper's experiment: MobileNet V1, every algorithm per layer and a full training step,
# native vs the paper's 32 channels per block vs autotuned (batch 64 at 224x224 on a GPU;
# batch 16 on a CPU, about a minute on 2 cores).
demo: cpu-kernels
	$(PY) -m diagonalwise bench --model mobilenet_v1 --output out/demo

test: test-torch test-triton test-jax test-tf test-mxnet

# tests/ has a folder per room: core, tuning, cli (PyTorch), kernels (ours: C++ CPU with the
# PyTorch suite, Triton through its interpreter on its own), frontends (one
# file per framework, each run in its framework's environment). Property-based tests run the
# derandomized 'ci' profile of tests/conftest.py; HYPOTHESIS_PROFILE=dev searches anew.
test-torch: cpu-kernels darknet-oracle
	$(PY) -m ruff check src tests examples
	$(PY) -m pytest -q tests/core tests/tuning tests/cli tests/kernels/test_cpu_direct.py \
		tests/model_files
	KERAS_BACKEND=torch $(PY) -m pytest -q tests/frontends/test_keras.py

# Debian's darknet package (the original darknet of 2018, as libdarknet.so): the second
# independent runtime our Darknet files are checked against, beside OpenCV. Installed as root;
# elsewhere its tests skip and say why.
darknet-oracle:
	@if [ -e /usr/lib/darknet/libdarknet.so ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		(apt-get install -y -q darknet > /dev/null 2>&1 || \
		 (apt-get update -q > /dev/null && apt-get install -y -q darknet > /dev/null)) \
		|| echo "could not install Debian's darknet: its tests will skip"; \
	else echo "not root: Debian's darknet is not installed, its tests will skip"; fi

# Our Triton kernels on CPU tensors through Triton's interpreter (slow; small shapes).
test-triton: $(INSTALLED)
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/kernels/test_triton.py

test-jax: .venv-jax/.installed
	.venv-jax/bin/python -m pytest -q tests/frontends/test_jax.py
	KERAS_BACKEND=jax .venv-jax/bin/python -m pytest -q tests/frontends/test_keras.py

test-tf: .venv-tf/.installed
	KERAS_BACKEND=tensorflow .venv-tf/bin/python -m pytest -q tests/frontends/test_keras.py

test-mxnet: .venv-mxnet/.installed
	.venv-mxnet/bin/python -m pytest -q tests/frontends/test_mxnet.py

lint: $(INSTALLED)
	$(PY) -m ruff check src tests examples

# Every model, dtype and layout, into benchmarks/results/ (from a clean tree), then the tables.
bench: $(INSTALLED)
	benchmarks/run_suite.sh

# On a GPU machine: the whole suite (native, refactorized, our Triton kernels; float32, float16,
# bfloat16; NCHW and channels_last) with the large-kernel set, in one run.
bench-gpu: $(INSTALLED)
	MODELS="mobilenet_v1 mobilenet_v2 efficientnet_b0 convnext_tiny large_kernels regnet_y_400mf \
		resnext50_32x4d mobilenet_v3_large x3d_style causal_conv1d" benchmarks/run_suite.sh

# The paper's table per framework: MobileNet V1 training steps (batch 16, 224x224) in each
# framework's environment, into benchmarks/results/<machine>-<date>/{jax,keras,mxnet}/; the
# PyTorch rows come from `make bench`.
RESULTS = benchmarks/results/$(shell $(PY) -c "import re; from diagonalwise.timing import \
	device_name; print(re.sub(r'[^a-z0-9]+', '-', device_name('cpu').lower()).strip('-'))")-$(shell date +%Y%m%d)
bench-frameworks: $(INSTALLED) .venv-jax/.installed .venv-tf/.installed .venv-mxnet/.installed
	.venv-jax/bin/python -m diagonalwise bench --framework jax --output $(RESULTS)/jax
	.venv-jax/bin/python -m diagonalwise bench --framework keras-jax --output $(RESULTS)/keras
	$(PY) -m diagonalwise bench --framework keras-torch --repeats 5 --output $(RESULTS)/keras
	.venv-tf/bin/python -m diagonalwise bench --framework keras-tf --repeats 5 --output $(RESULTS)/keras
	.venv-mxnet/bin/python -m diagonalwise bench --framework mxnet --output $(RESULTS)/mxnet
	$(PY) -m diagonalwise report

clean:
	rm -rf $(VENV) .venv-jax .venv-tf .venv-mxnet .pytest_cache .ruff_cache .hypothesis
