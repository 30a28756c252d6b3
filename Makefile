# The two entry points: `make demo` (the main job) and `make test`. Each creates .venv and
# installs what it needs; torch and torchvision are pinned to the releases on this machine's disk.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint install clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 \
		-e '.[test,bench]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(PY) -c "import diagonalwise, torchvision, pytest, hypothesis"
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(PY) examples/convert_mobilenet_v2.py

test: $(INSTALLED)
	$(PY) -m ruff check src tests examples
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(PY) -m ruff check src tests examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
