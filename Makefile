# The two commands of the README: `make run` and `make test`. Both set everything up first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KAFKA := deploy/kafka/local-kafka
# Tests use a broker of their own, on a free port below the ephemeral range (tests/ports.py), so
# they never touch a broker `make run` left running, nor another test run's.
TEST_KAFKA_PORT ?=

.PHONY: setup run test unit lint schemas kafka-stop clean lock test-upstream

# Every install (setup, CI, `make bench`, the Dockerfile) takes the lock files in requirements/,
# every package at an exact version, then the project with --no-deps: nothing is resolved at
# install time, so a new release of anything (of faust-streaming, mode and aiokafka above all,
# whose internals pipeline/ patches: pipeline/runtime/versions.py) comes in only through
# `make lock`. runtime.txt is the image's, dev.txt setup's and CI's, bench.txt the benchmark's:
# all three from one resolution, so a package has one version in all of them. A package installed
# or removed by hand (site-packages changes) also makes the next `make setup` install the lock
# again.
$(BIN)/casewatch: pyproject.toml requirements/dev.txt $(wildcard $(VENV)/lib/*/site-packages)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-deps -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

setup: $(BIN)/casewatch

# `make lock` re-resolves pyproject.toml into requirements/ with uv (from the dev extra), keeping
# each pin that still satisfies pyproject.toml; `make lock UPGRADE=1` takes the newest releases.
# The next `make setup` installs the result. To move faust-streaming, mode-streaming or aiokafka:
# change pyproject.toml and pipeline/runtime/versions.py, `make lock`, then `make test-upstream`.
LOCK = $(BIN)/uv pip compile -q --universal --python-version 3.11 --annotation-style line \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) pyproject.toml
lock: $(BIN)/uv
	$(LOCK) --extra dev --extra bench -o requirements/bench.txt
	$(LOCK) --extra dev -c requirements/bench.txt -o requirements/dev.txt
	$(LOCK) -c requirements/bench.txt -o requirements/runtime.txt

# Only before a first `make setup` (which installs the locked uv): uv at its locked version.
$(BIN)/uv:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$$(grep -m1 -o '^uv==[^ ]*' requirements/dev.txt || echo uv)"

# The tests that pin upstream behaviour pipeline/ relies on (the `upstream` marker): what to run
# first against a new release of faust-streaming, mode-streaming or aiokafka.
test-upstream: setup
	$(BIN)/pytest -m upstream tests/unit

# Sets up and runs the demo: the local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), two
# workers, realistic traffic with the seed stories, simulated handler teams and a live view.
# Ctrl-C stops everything it started.
run: setup
	$(BIN)/casewatch demo

# Sets up, starts a broker for the tests (unless KAFKA_BOOTSTRAP_SERVERS is set), runs every
# test, integration tests included, and stops the broker it started; then the benchmark's smoke
# runs (bench/run.py, floor.py, logic.py, soak.py, api.py: about 4 min) and the short chaos run (about
# 4 min, on a broker of its own: docs/reliability.md).
test: setup prometheus chromium
	@set -e; \
	if [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then \
	  port=$(TEST_KAFKA_PORT); export CASEWATCH_KAFKA_PORT=$${port:-$$($(BIN)/python tests/ports.py 0 1)}; \
	  trap 'env -u KAFKA_BOOTSTRAP_SERVERS $(KAFKA) stop --purge' EXIT; \
	  export KAFKA_BOOTSTRAP_SERVERS=$$($(KAFKA) start); \
	fi; \
	$(BIN)/ruff check pipeline tests; \
	$(BIN)/mypy; \
	$(BIN)/pytest; \
	$(BIN)/python bench/run.py --smoke; \
	$(BIN)/python bench/floor.py --smoke; \
	$(BIN)/python bench/logic.py --days 1 --customers 200; \
	$(BIN)/python bench/soak.py --smoke --out /tmp/casewatch-soak-smoke.json; \
	$(BIN)/python bench/api.py --smoke; \
	env -u KAFKA_BOOTSTRAP_SERVERS $(BIN)/python tests/chaos/run.py --short --trace --out /tmp/casewatch-chaos-short.json

# prometheus and promtool (alert rule tests, the dashboard test) from Debian's package, installed
# only when missing. No recommends (no node exporter); the package's own service is not needed
# (tests run their own Prometheus on a free port) and is stopped where systemd started it.
.PHONY: prometheus
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  set -e; sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	  if [ -d /run/systemd/system ]; then $$sudo systemctl disable --now prometheus || true; fi; \
	}

# Chromium (the CSR page's browser tests, tests/unit/test_page.py and
# tests/integration/test_csr_page.py) from Debian's package, installed
# only when /usr/bin/chromium is missing; no recommends. Without it that test is skipped, except
# when CI is set, where it fails.
.PHONY: chromium
chromium:
	@[ -x /usr/bin/chromium ] || { \
	  set -e; sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	}

unit: setup prometheus chromium
	$(BIN)/pytest tests/unit

lint: setup
	$(BIN)/ruff check pipeline tests
	$(BIN)/mypy

schemas: setup
	$(BIN)/casewatch schemas

kafka-stop:
	$(KAFKA) stop

clean:
	rm -rf $(VENV) *.egg-info

# The benchmark (bench/run.py, docs/performance.md): small by default, `make bench FULL=1` for
# the full run (100,000 customers), `make bench FULL=1 SOAK=10` adds a 10-minute memory soak.
# Uses KAFKA_BOOTSTRAP_SERVERS, or starts (and removes) its own local broker on a free port.
.PHONY: bench bench-smoke bench-floor bench-soak
bench: setup
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q --no-deps -r requirements/bench.txt
	$(BIN)/python bench/run.py $(if $(FULL),--full) $(if $(SOAK),--soak $(SOAK))

# What Faust itself costs per message, against the plain client and the worker (bench/floor.py).
bench-floor: setup
	$(BIN)/python bench/floor.py --rounds 3

# Memory at equilibrium: windows compressed like the load, 15 min warm-up, 10 min measured.
bench-soak: setup
	$(BIN)/python bench/soak.py

# Every phase of the benchmark on a few thousand events, in under a minute: what CI runs so that
# the benchmark keeps working (not a timed test: it fails only when a phase fails).
bench-smoke: setup
	$(BIN)/python bench/run.py --smoke

# The case API under live event load (bench/api.py, docs/cases.md): 500 requests/s while one
# worker takes 2,800 events/s.
.PHONY: bench-api
bench-api: setup
	$(BIN)/python bench/api.py

# The chaos harness (tests/chaos/run.py, docs/reliability.md): workers killed with SIGKILL,
# scaled 1 -> 3 -> 1, the broker restarted; every handler record checked against the replay
# oracle. It needs brokers it may stop, so it always starts its own, whatever
# KAFKA_BOOTSTRAP_SERVERS says, on a free port below the ephemeral range (32768-60999), so no
# client socket can take the port while the broker is down (tests/ports.py). `chaos-short`
# takes about 4 min and is part of `make test`; it fails when anything is lost or spurious, or
# when the group has not caught up 5 min after the input ended. Both write down every worker's
# steps (--trace), so that a run that loses something says where (tests/chaos/analyse.py). `chaos` is the full run (234,000 events, 10,000
# customers, 12 kills; about 11 min); CLUSTER=1 uses three brokers and bounces one of them.
.PHONY: chaos chaos-short
chaos: setup
	env -u KAFKA_BOOTSTRAP_SERVERS $(BIN)/python tests/chaos/run.py --trace $(if $(CLUSTER),--cluster)

chaos-short: setup
	env -u KAFKA_BOOTSTRAP_SERVERS $(BIN)/python tests/chaos/run.py --short --trace $(if $(CLUSTER),--cluster)
