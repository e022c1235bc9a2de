# Every target creates the virtual environment it needs by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench chaos lint typecheck clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	cd $$(mktemp -d) && $(CURDIR)/$(BIN)/conveyor demo

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/pytest

# Not part of CI: peers in their own pinned venvs under bench/.venv-peers, then the full run
# (15-20 minutes on 2 cores) written to docs/benchmarks.md. Run it on a quiet machine.
# BENCH_ARGS="--quick" for a ~1/10 smoke run, "--soak 1000000" to add the 1M-job RSS soak.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python bench/peers/install.py --root bench/.venv-peers
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Not part of CI: 100,000 jobs while workers are SIGKILLed at random and a private Redis is
# killed and restarted; prints lost / duplicated / unexpected and the time taken.
chaos: $(STAMP)
	$(BIN)/python -m tests.torture.chaos --jobs 100000 --workers 3 --broker redis
	$(BIN)/python -m tests.torture.chaos --jobs 20000 --workers 3 --broker sqlite

lint: $(STAMP)
	$(BIN)/ruff check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench/.venv-peers bench/.results
