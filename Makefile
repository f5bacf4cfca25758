# Two set-up commands: `make demo` (the main job on the built-in MNIST) and `make test`.
# Each creates .venv if it is missing and installs digitrec with every extra, at the exact versions
# of constraints.txt (pyproject.toml has the ranges a `pip install digitrec` accepts). torch comes
# first, alone, so pip takes the CPU build.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PIP := $(PY) -m pip install --quiet -c constraints.txt
# the browser that tests/outputs/test_serve_browser.py and test_report.py drive
BROWSER := /usr/bin/chromium
# PostgreSQL's initdb, which tests/training/test_tune.py starts a throwaway server with (Debian's package puts
# it under /usr/lib/postgresql/<version>/bin, not on PATH)
INITDB := $(firstword $(shell command -v initdb 2>/dev/null) $(wildcard /usr/lib/postgresql/*/bin/initdb))

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch
	$(PIP) -e ".[serve,onnx,notebook,tune,track,test]"
	touch $@

.PHONY: demo test check bench install browser postgres notebook pretrained dist
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/digitrec run --preset $(or $(PRESET),fast)

# The browser the tests need: installed with apt-get where this user may (root, or sudo without a
# password), else one line saying the command to run.
browser:
	@if [ ! -x $(BROWSER) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "make test needs $(BROWSER) for the browser tests; install it with: sudo apt-get install chromium" >&2; exit 2; fi; \
	  echo "installing chromium (apt-get) for the browser tests"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# The PostgreSQL server binaries that tests/training/test_tune.py runs: installed as the browser is.
postgres:
	@if [ -z "$(INITDB)" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "make test needs PostgreSQL's server (initdb, pg_ctl) for tests/training/test_tune.py; install it with: sudo apt-get install postgresql" >&2; exit 2; fi; \
	  echo "installing postgresql (apt-get) for the tuning tests"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	fi

test: $(VENV)/.installed browser postgres
	$(PY) -m pytest -q

# The quick subset while you work (under 2 minutes here): every test not marked slow.
check: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

# The reference notebook, executed: notebooks/digit_recognizer.ipynb (ready to upload to Kaggle).
# DIGITREC_SMALL=1 make notebook runs it on a small sample in about a minute.
notebook: $(VENV)/.installed
	$(PY) notebooks/execute.py notebooks/digit_recognizer.py

bench: $(VENV)/.installed  # speed figures of issue 3 (about 10 minutes); accuracy and reference runs are separate scripts
	$(PY) benchmarks/speed.py

# The models that ship inside the package (src/digitrec/pretrained/): fast and best trained on the 60,000
# MNIST training images with a fixed seed, scored, exported to ONNX; SHA-256s in models.json. best takes
# 65 minutes on one thread of the shared 2-core machine (it trains on one thread); a finished run in
# build/pretrained/ is reused (docs/models/).
pretrained: $(VENV)/.installed
	$(PY) scripts/make_pretrained.py

# The wheel and the sdist in dist/, with the standard front-end, their metadata checked (docs/releasing.md).
dist: $(VENV)/.installed
	rm -rf dist
	$(PY) -m build
	$(PY) -m twine check --strict dist/*
	@ls -l dist
