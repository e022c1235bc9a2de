# Every target creates the virtual environment it needs by itself, from the lock files in
# requirements/ (exact versions with hashes), so a fresh clone installs what CI tested.
#   make lock    re-resolve the locks on purpose (newest versions the ranges allow)
#   make floor   run the tests on the lowest versions pyproject.toml declares
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUNTIME_STAMP := $(VENV)/.installed-runtime
PIP := $(BIN)/pip install -q --disable-pip-version-check
UV_COMPILE := $(BIN)/uv pip compile -q --generate-hashes --universal --python-version 3.11

.PHONY: demo test docs bench chaos lint typecheck format lock floor clean screenshots

# The runtime dependencies only: what `make demo` needs.
$(RUNTIME_STAMP): requirements/runtime.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --require-hashes --no-deps -r requirements/runtime.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

# Runtime plus the test and lint tools.
$(STAMP): requirements/dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --require-hashes --no-deps -r requirements/dev.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@ $(RUNTIME_STAMP)

# The demo's database lives in .conveyor-demo/, so the command it suggests next finds it.
demo: $(RUNTIME_STAMP)
	$(BIN)/conveyor demo --url sqlite:///$(CURDIR)/.conveyor-demo/demo.db

# The tests run on PYTEST_WORKERS pytest-xdist workers. The suite mostly waits (worker
# subprocesses, real leases, graces and timeouts: a quarter of one core on average, run in one
# process), so 4 workers on CI's 2 cores still leave room. Tests that must not run at the
# same time as each other share an @pytest.mark.xdist_group (--dist loadgroup keeps a group
# on one worker). PYTEST_WORKERS=0 runs them in this process, in order. The slowest tests
# are listed at the end: the suite has 15 minutes in CI.
PYTEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(MAKE) --no-print-directory docs
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

# The documentation site (mkdocs.yml) in site/: the benchmark chart drawn again from
# docs/benchmarks.md, then every page and the API reference built in strict mode, so a broken
# link, anchor, reference or docstring, or a page missing from the nav, fails (and `make test`).
# Not --quiet: it hides the warnings that --strict counts, and the build passes.
docs: $(STAMP)
	$(BIN)/python bench/chart.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

# Upgrade on purpose: re-resolve both locks to the newest versions pyproject.toml allows,
# then run `make test` and commit requirements/ with what it changed.
lock: $(STAMP)
	$(UV_COMPILE) --upgrade pyproject.toml requirements/build.in -o requirements/runtime.txt
	$(UV_COMPILE) --upgrade pyproject.toml requirements/build.in --extra dev -o requirements/dev.txt

# The declared floor is honest: resolve the runtime dependencies at the lowest versions
# pyproject.toml allows (uv's lowest-direct: each floor, and the newest of what it needs),
# install them over the locked dev tools in .venv-floor, and run the tests there.
# Raise a floor in pyproject.toml when this fails.
floor: $(STAMP)
	rm -rf .venv-floor && $(PY) -m venv .venv-floor
	$(UV_COMPILE) --resolution lowest-direct pyproject.toml requirements/build.in \
		-o .venv-floor/runtime.txt
	.venv-floor/bin/pip install -q --require-hashes --no-deps -r requirements/dev.txt
	.venv-floor/bin/pip install -q --require-hashes --no-deps -r .venv-floor/runtime.txt
	.venv-floor/bin/pip install -q --no-deps --no-build-isolation -e .
	.venv-floor/bin/pip list 2>/dev/null | grep -iE '^(redis|msgspec|click|rich|hiredis) '
	.venv-floor/bin/pytest -q

# Not part of CI: peers in their own pinned venvs under bench/.venv-peers, then a full run
# on each of BENCH_BACKENDS (each on a private server of its own, RabbitMQ on a fresh virtual
# host of the machine's 127.0.0.1:5672 or $BENCH_RABBITMQ; 25-30 minutes for Redis and about
# 15 for PostgreSQL on 2 cores), written to docs/benchmarks.md. Run it on a quiet machine.
# BENCH_ARGS="--quick" for a ~1/10 smoke run, "--soak 1000000" to add the 1M-job RSS soak;
# BENCH_BACKENDS=redis with Redis-only workloads in BENCH_ARGS (--workloads w2-io, ...).
# `cluster` is Conveyor alone on a private Redis Cluster with 1, 2 and 3 masters busy
# (bench/cluster_scaling.py, a few minutes; its own options in BENCH_CLUSTER_ARGS).
BENCH_ARGS ?=
BENCH_CLUSTER_ARGS ?=
BENCH_BACKENDS ?= redis postgres rabbitmq cluster
bench: $(STAMP)
	$(BIN)/python bench/peers/install.py --root bench/.venv-peers
	for backend in $(BENCH_BACKENDS); do \
		if [ $$backend = cluster ]; then \
			$(BIN)/python bench/cluster_scaling.py $(BENCH_CLUSTER_ARGS) || exit 1; \
		else \
			$(BIN)/python bench/run.py --backend $$backend $(BENCH_ARGS) || exit 1; \
		fi; \
	done

# Not part of CI: 100,000 jobs while workers are SIGKILLed at random and a private Redis is
# killed and restarted; prints lost / duplicated / unexpected and the time taken.
chaos: $(STAMP)
	$(BIN)/python -m tests.torture.chaos --jobs 100000 --workers 3 --broker redis
	$(BIN)/python -m tests.torture.chaos --jobs 20000 --workers 3 --broker sqlite

# The dashboard's pictures in docs/img/ (docs/dashboard.md, README): the browser tests' own
# code, after two workers and a producer have run for CONVEYOR_SCREENSHOTS_SECONDS (150).
screenshots: $(STAMP)
	CONVEYOR_SCREENSHOTS=$(CURDIR)/docs/img $(BIN)/pytest -q -p no:randomly \
		tests/integration/test_dashboard_browser.py -k screenshots

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-floor .mypy_cache .ruff_cache .pytest_cache bench/.venv-peers \
		bench/.results .conveyor-demo site
