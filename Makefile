# popevit: two commands for a fresh machine, `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint format install browser clean

# The lock pins every transitive package. torch is pinned to the registry's 2.14.1 so that pip never
# picks a local CPU-only torch wheel that the registry's torchvision cannot load.
$(STAMP): requirements.lock requirements-dev.lock requirements-serve.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-serve.lock  # gradio caps pillow<13: see that file
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/popevit demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: $(STAMP) lint
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

# Debian's chromium and chromedriver for the web-app test in a real browser (tests/serve/browser.py runs the same
# command itself when it runs as root and they are missing, and skips with the reason when it cannot).
browser:
	apt-get install -y --no-install-recommends chromium chromium-driver

clean:
	rm -rf $(VENV) runs .pytest_cache
