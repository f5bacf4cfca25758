# Two set-up commands: `make demo` (the main job on the built-in MNIST) and `make test`.
# Each creates .venv if it is missing. torch is installed first, pinned, so pip takes the CPU build.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: demo test bench install
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/digitrec run --preset $(or $(PRESET),fast)

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed  # speed figures of issue 3 (about 10 minutes); accuracy and reference runs are separate scripts
	$(PY) benchmarks/speed.py
