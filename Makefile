# Everything runs inside a project virtualenv (.venv) that `make install` creates from pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test lint unit bench clean

$(BIN)/celvern: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/celvern

## demo: apply the bundled example policies to the bundled resources (shows passes and a failure)
demo: install
	@$(BIN)/celvern apply examples/policies --resource examples/resources; \
	  echo "(celvern apply exited $$?: 1 means a resource failed a policy, which this demo shows on purpose)"
	$(BIN)/celvern test examples/tests

## lint: ruff, formatting, mypy --strict and the import-layering contracts
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## unit: the pytest suite only (unit, CLI, conformance gate)
unit: install
	$(BIN)/python -m pytest

## test: everything CI runs
test: lint unit

## bench: the benchmark suite, with the cel-python baseline (the `bench` extra); rewrites its section of BENCHMARKS.md
bench: install
	@$(BIN)/python -c 'import celpy' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
