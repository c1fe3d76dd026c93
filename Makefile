# `make demo` and `make test` work on a fresh clone: each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch lives here on the project's machines; elsewhere pip uses PyPI.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: demo test test-fast lint typecheck check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_FLAGS) "torch==2.13.0"
	$(BIN)/python -m pip install --quiet $(PIP_FLAGS) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedloom demo --out fedloom-report

# The suite runs in two (or up to four) processes, a test file each at a time: the
# integration tests mostly wait on the processes and servers they start.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# The lane to run while editing: no processes or servers (tests/integration is marked
# `process` by tests/conftest.py) and nothing slow; under 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not process and not slow" tests/unit

# ruff check includes the docstring rules (D, src only; see pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

check: lint typecheck test

clean:
	rm -rf $(VENV) fedloom-report .mypy_cache .ruff_cache .pytest_cache
