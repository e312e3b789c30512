# geopush: `make run` starts everything with a demo; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck rules unit system-deps bench clean

# The virtualenv with geopush (editable) and its dev tools; redone when pyproject changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

run: system-deps $(STAMP)
	$(BIN)/geopush dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The Prometheus alerting rules, their unit tests and the example scrape config.
rules: system-deps
	promtool check rules docs/prometheus/alerts.yml
	promtool test rules docs/prometheus/alerts_test.yml
	promtool check config docs/prometheus/prometheus.yml

# The whole suite on a single Redis, then once more on a private 3-master Redis
# Cluster: the end-to-end suite (less the tests that bring their own Redis, a browser,
# a wheel build or locust: nothing of Redis in them to try again; and the ten-process
# test, run on the single Redis) and the integration
# tests of what uses Redis most.
CLUSTER_TESTS := tests/e2e $(addprefix tests/integration/test_,$(addsuffix .py,\
	matcher fanout streams erasure_and_expiry dry_run ingest apns_token client_address \
	device_abuse public_matching))
test: system-deps $(STAMP) lint typecheck rules
	$(BIN)/pytest
	GEOPUSH_TEST_REDIS_CLUSTER=1 $(BIN)/pytest $(CLUSTER_TESTS) \
		--ignore=tests/e2e/test_redis_outage.py --ignore=tests/e2e/test_redis_failover.py \
		--ignore=tests/e2e/test_console_browser.py \
		--ignore=tests/e2e/test_wheel.py --ignore=tests/e2e/test_locust.py \
		--ignore=tests/e2e/test_many_processes.py

unit: $(STAMP)
	$(BIN)/pytest tests/unit

clean:
	rm -rf .geopush .mypy_cache .ruff_cache .pytest_cache .hypothesis
