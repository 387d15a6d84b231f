# cmr_assets — every target creates .venv and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo experiment test test-slow test-cluster lint ui bench gpu-check clean-data

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/cmr-assets demo

experiment: install
	$(BIN)/cmr-assets experiment --repeats 5

test: install
	bash scripts/ensure_chromium.sh
	$(BIN)/ruff check cmr_assets cmr_assets_tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/dg check defs
	$(BIN)/pytest -q -p no:cacheprovider

test-slow: install
	$(BIN)/pytest -q -m slow

# Slow, opt-in: PostgreSQL + dagster-daemon + concurrent ingestion runs + MLflow on PostgreSQL, for real
# (scripts/test_cluster.sh; needs the PostgreSQL 15 server binaries: initdb, pg_ctl, postgres).
test-cluster: install
	$(BIN)/pip install -q -c requirements.lock -e '.[dev,cluster]'
	bash scripts/test_cluster.sh

lint: install
	$(BIN)/ruff check cmr_assets cmr_assets_tests benchmarks scripts
	$(BIN)/mypy

ui: install
	bash scripts/ui.sh

bench: install
	PYTHONPATH=$(CURDIR) $(BIN)/cmr-assets bench

clean-data:
	rm -rf data/scans data/reference data/slices data/annotations data/reports data/cmr.duckdb* mlflow/mlflow.db mlflow/artifacts
