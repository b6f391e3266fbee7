# Thin targets over the cudastack CLI. `make bench` and `make test` set themselves up on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch (and torchvision, for the training and data-loading benches) the suite runs with in
# this environment; override for another build, e.g.
#   make bench TORCH_SPEC='torch==2.9.1 torchvision==0.24.1'
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC)' | tr -c 'a-zA-Z0-9.=\n' _)
ARGS ?=

.PHONY: setup bench test perf lint format clean images reproduce

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[bench,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)  ## create .venv with cudastack, torch and the dev tools

bench: $(STAMP)  ## the main job: run the suite, print the table (ARGS='--bench gemm' ...)
	$(VENV)/bin/cudastack bench $(ARGS)

# pytest-xdist workers for `make test` (0: one process). The Docker engine's tests stay in one
# worker (tests/conftest.py), so two overlap the image builds with the other tests.
TEST_JOBS ?= 2

test: $(STAMP)  ## unit and integration tests (real torch on this device)
	@# pytest exits 5 when it collected nothing: a test run that tested nothing is a failure.
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadgroup $(ARGS); code=$$?; \
	  if [ $$code -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$code

perf: $(STAMP)  ## the harness's own speed, with pytest-benchmark (not part of make test)
	$(PY) -m pytest -q -p no:cacheprovider tests/perf --benchmark-only -o addopts="" $(ARGS)
	$(PY) tests/perf/gemm_overhead.py

# Workers for `make mutants`; each runs a mutant's tests in its own process.
MUTANTS_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: mutants
mutants: $(STAMP)  ## mutation testing of the code behind the numbers, summary in tests/mutants/SUMMARY.md (slow; not part of make test)
	$(PY) tests/mutants/summary.py --run --jobs $(MUTANTS_JOBS) $(ARGS)

# The interpreter that holds torch for the GPU check: this project's .venv when it exists.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: gpu-check
gpu-check:  ## on a GPU host: smoke, then the standard headline benches, into results/reference/<gpu>-<date>/ (ARGS='--out DIR')
	PYTHONPATH=src $(GPU_PYTHON) scripts/gpu_check.py --python $(GPU_PYTHON) $(ARGS)

images: $(STAMP)  ## build every cell's image (skips those already built)
	$(VENV)/bin/cudastack build $(ARGS)

reproduce: $(STAMP)  ## rebuild and verify a past run's cells: make reproduce RUN=<run id>
	@test -n "$(RUN)" || { echo "usage: make reproduce RUN=<run id or folder>" >&2; exit 2; }
	$(VENV)/bin/cudastack reproduce $(RUN) $(ARGS)

lint: $(STAMP)  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
