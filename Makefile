# Targets match the README. Each one creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test faults bench cluster cluster-stop flower-screenshot config-docs openapi browser lint format clean

# apt-get needs root; sudo only when this is not root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The whole pipeline on embedded defaults: no server needs to be running.
demo: $(STAMP)
	$(VENV)/bin/telemetry demo

## Unit tests (mongomock) and integration tests (RabbitMQ on 127.0.0.1:5672, SecantusDB);
## then the worker and fault tests again with BATCH_SIZE=1 on classic queues (the cluster
## scenario, on quorum queues by design, and the TLS scenarios run once).
test: $(STAMP) browser
	$(PY) -m pytest
	TEST_BATCH_SIZE=1 TEST_QUEUE_TYPE=classic $(PY) -m pytest -m "not cluster and not tls" tests/integration/test_worker.py tests/integration/test_faults_*.py

## Only the fault-injection suite (part of `make test` too); see docs/reliability.md.
faults: $(STAMP)
	$(PY) -m pytest -m faults

## Throughput against baselines from the same run, one benchmark at a time: the pipeline
## against bare kombu (benchmarks/run.py; BENCH_ARGS to tune), queue types on private
## RabbitMQ nodes and a local cluster (benchmarks/queues.py), 1 shard against 3 on a local
## cluster (benchmarks/shards.py), the read API (benchmarks/api.py),
## the scraper: parsing, scrape-and-publish against the bare publisher, a 200-exporter fleet
## (benchmarks/scrape.py).
bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -m benchmarks.queues
	$(PY) -m benchmarks.shards
	$(PY) -m benchmarks.api
	$(PY) -m benchmarks.scrape

## A local 3-node RabbitMQ cluster on private ports (tools/rabbitmq_nodes.py; the shared
## broker at 5672 is left alone); it prints the failover URL. Stop it with `make cluster-stop`.
cluster: $(STAMP)
	$(PY) -m tools.rabbitmq_nodes cluster start

cluster-stop: $(STAMP)
	$(PY) -m tools.rabbitmq_nodes cluster stop

## Flower's task page as docs/flower-tasks.png, from a live worker (installs Debian's chromium; not CI).
flower-screenshot: $(STAMP) browser
	$(PY) -m tools.flower_screenshot --output docs/flower-tasks.png

## Debian's chromium, for the dashboard's browser test (Playwright drives it; its own
## browser download is not reachable here).
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

## docs/openapi.json from the API app (a test fails when it is stale).
openapi: $(STAMP)
	$(PY) -m tools.openapi

## docs/configuration.md from the settings declaration in telemetry/config.py.
config-docs: $(STAMP)
	$(PY) -m tools.config_docs

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/bandit -q -r telemetry --severity-level high --confidence-level high

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
