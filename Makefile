# The two commands of the README: `make run` and `make test`. Both set everything up first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KAFKA := deploy/kafka/local-kafka
# Tests use their own broker port so they never touch a broker `make run` left running.
TEST_KAFKA_PORT ?= 39092

.PHONY: setup run test unit lint schemas kafka-stop clean

$(BIN)/casewatch: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/casewatch

# Sets up, starts the local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), creates topics,
# publishes the sample stream and runs a worker in the foreground (Ctrl-C stops it).
run: setup
	@export KAFKA_BOOTSTRAP_SERVERS=$$($(KAFKA) start) && \
	  echo "broker: $$KAFKA_BOOTSTRAP_SERVERS" && \
	  $(BIN)/casewatch check && $(BIN)/casewatch topics && \
	  $(BIN)/casewatch produce examples/sample.jsonl && \
	  echo "metrics: http://127.0.0.1:$${CASEWATCH_METRICS_PORT:-9464}/metrics" && \
	  $(BIN)/casewatch worker

# Sets up, starts a broker for the tests (unless KAFKA_BOOTSTRAP_SERVERS is set), runs every
# test, integration tests included, and stops the broker it started.
test: setup
	@set -e; \
	if [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then \
	  export CASEWATCH_KAFKA_PORT=$(TEST_KAFKA_PORT); \
	  trap 'env -u KAFKA_BOOTSTRAP_SERVERS $(KAFKA) stop --purge' EXIT; \
	  export KAFKA_BOOTSTRAP_SERVERS=$$($(KAFKA) start); \
	fi; \
	$(BIN)/ruff check pipeline tests; \
	$(BIN)/mypy; \
	$(BIN)/pytest

unit: setup
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
