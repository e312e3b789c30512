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

test: system-deps $(STAMP) lint typecheck rules
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

clean:
	rm -rf .geopush .mypy_cache .ruff_cache .pytest_cache .hypothesis
