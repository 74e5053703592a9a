# Targets match the README. Each one creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test faults bench lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The whole pipeline on embedded defaults: no server needs to be running.
demo: $(STAMP)
	$(VENV)/bin/telemetry demo

## Unit tests (mongomock) and integration tests (RabbitMQ on 127.0.0.1:5672, SecantusDB).
test: $(STAMP)
	$(PY) -m pytest

## Only the fault-injection suite (part of `make test` too); see docs/reliability.md.
faults: $(STAMP)
	$(PY) -m pytest -m faults

## Throughput against baselines from the same run (see benchmarks/run.py; BENCH_ARGS to tune).
bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
