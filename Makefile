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
# `make regress`: the one gate (workbench regress = workbench run + workbench compare). It runs
# REGRESS_SUITE and compares it with the baseline stored for this machine in
# REGRESS_STORAGE/<machine id>/<suite name>/ (the id hashes CPU model, cores, memory, GPU, torch);
# the first run on a machine becomes that baseline. Exit 1 on a regression, new failure or missing
# case. REGRESS_ARGS: e.g. --threshold 0.15, --markdown comment.md.
REGRESS_SUITE ?= suites/regress.toml
REGRESS_STORAGE ?= results/baselines
REGRESS_ARGS ?=

.PHONY: install bench bench-full convergence test test-all lint format clean regress regress-baseline report

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "using the torch already installed: $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	@# the project's dependencies must not move torch (a peer's newer release asking for a newer
	@# torch once pulled torch 2.14 over TORCH_SPEC): keep the torch installed above
	$(PY) -c 'import torch; print("torch==" + torch.__version__)' > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -e ".[fused,dev,peers]" -c $(VENV)/torch-constraint.txt
	@touch $@

bench: install
	@suite="$(SUITE)"; \
	if [ -z "$$suite" ]; then \
		if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
			suite=suites/gpu.toml; else suite=suites/quick.toml; fi; \
	fi; \
	echo "workbench run $$suite"; \
	$(PY) -m workbench.cli run "$$suite" $(BENCH_ARGS)
	@# figures (PNG, SVG) and the HTML report of the run just made (the newest under results/)
	@$(MAKE) --no-print-directory report

# the whole CPU sweep: compiled backend, GPT-2 small's shapes, a sharded case (see suites/README)
bench-full: install
	$(PY) -m workbench.cli run suites/full.toml $(BENCH_ARGS)
	@$(MAKE) --no-print-directory report

# every optimizer on the test problems of workbench/problems (CPU, a few minutes): loss curves,
# steps to target, distance from torch.optim's trajectory
convergence: install
	$(PY) -m workbench.cli run suites/convergence.toml $(BENCH_ARGS)

# RUN/report.html and RUN/figures/ for RUN=results/<run>, by default the newest run there
RUN ?=
report: install
	@run="$(RUN)"; \
	if [ -z "$$run" ]; then run=$$(ls -t results/*/manifest.json 2>/dev/null | head -1); fi; \
	if [ -z "$$run" ]; then echo "make report: no run under results/ (make bench first)"; exit 2; fi; \
	$(PY) -m workbench.cli report "$${run%/manifest.json}"

test: install
	$(PY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

regress: install
	$(PY) -m workbench.cli regress $(REGRESS_SUITE) --baselines $(REGRESS_STORAGE) $(REGRESS_ARGS)

regress-baseline: install
	$(PY) -m workbench.cli regress $(REGRESS_SUITE) --baselines $(REGRESS_STORAGE) --save-baseline \
		$(REGRESS_ARGS)

lint: install
	$(PY) -m ruff check workbench tests notebooks
	$(PY) -m ruff format --check workbench tests

format: install
	$(PY) -m ruff format workbench tests
	$(PY) -m ruff check --fix workbench tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
