# The two entry points: `make demo` (the main job) and `make test`. Each creates .venv and
# installs what it needs; torch and torchvision are pinned to the releases on this machine's disk.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint install bench clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 \
		-e '.[test,bench]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(PY) -c "import diagonalwise, torchvision, pytest, hypothesis"
	touch $@

install: $(INSTALLED)

# The paper's experiment: MobileNet V1, every algorithm per layer and a full training step,
# native vs the paper's 32 channels per block vs autotuned (batch 64 at 224x224 on a GPU;
# batch 16 on a CPU, about two minutes on 2 cores).
demo: $(INSTALLED)
	$(PY) -m diagonalwise bench --model mobilenet_v1 --output out/demo

# Every model, dtype and layout, into benchmarks/results/, then the README tables.
bench: $(INSTALLED)
	benchmarks/run_suite.sh

test: $(INSTALLED)
	$(PY) -m ruff check src tests examples
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(PY) -m ruff check src tests examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
