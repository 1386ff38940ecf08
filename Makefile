# Two entry points on a fresh machine: `make bench` and `make test`. Both create .venv first.
#
# torch: a machine that already has a torch (a GPU box with its CUDA build) gets a venv that sees
# the system site-packages, so that torch is used as it is. Elsewhere the venv gets TORCH_SPEC, the
# CPU wheel this project is developed against.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
# `make bench` runs suites/gpu.toml where CUDA is present, else suites/quick.toml; SUITE=... picks.
SUITE ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install bench test test-all lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "using the torch already installed: $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -q -e ".[fused,dev,peers]"
	@touch $@

bench: install
	@suite="$(SUITE)"; \
	if [ -z "$$suite" ]; then \
		if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
			suite=suites/gpu.toml; else suite=suites/quick.toml; fi; \
	fi; \
	echo "workbench run $$suite"; \
	$(PY) -m workbench.cli run "$$suite" $(BENCH_ARGS)

test: install
	$(PY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check workbench tests
	$(PY) -m ruff format --check workbench tests

format: install
	$(PY) -m ruff format workbench tests
	$(PY) -m ruff check --fix workbench tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
