# The two commands of the README: `make run` and `make test`. Each creates .venv and
# installs what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch lies on this kind of machine's disk; an unpinned torch would pull
# a multi-GB CUDA build. Where a GPU is present, pip resolves torch from pyproject's range.
TORCH_CPU ?= torch==2.13.0

.PHONY: run test lint venv clean

$(BIN)/capacity: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet "$(TORCH_CPU)"; fi
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/capacity

## the service on the embedded default (SQLite): API + one worker + a demo capacity job
run: venv
	bash scripts/run.sh

## the whole test suite (without the long `slow` science runs), then lint and types
test: venv
	bash scripts/install-test-tools.sh
	$(BIN)/pytest
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache *.egg-info
