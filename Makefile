# Two entry points on a fresh machine (each sets itself up and is idempotent):
#   make demo   run the graph on the bundled samples and print where the outputs are
#   make test   set up the dev environment and run the whole test suite (+ ruff)
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster
export OPENBLAS_NUM_THREADS := 1

.PHONY: demo test lint dev bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/recsys-assets run --config configs/env/local.json --start 2026-01-01
	$(VENV)/bin/recsys-assets run --config configs/env/sample.json --start 2026-01-01 --end 2026-01-03

test: $(STAMP)
	$(VENV)/bin/ruff check recsys_assets recsys_assets_tests benchmarks testdata
	$(VENV)/bin/ruff format --check recsys_assets recsys_assets_tests benchmarks testdata
	$(VENV)/bin/pytest -q

dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -m recsys_assets

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run_canonical.py --events 5000000

clean:
	rm -rf .out .dagster
