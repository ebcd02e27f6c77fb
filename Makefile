# Two entry points on a fresh machine (each sets itself up and is idempotent):
#   make demo   run the graph on the bundled samples and print where the outputs are
#   make test   set up the dev environment and run the whole test suite (+ ruff, + smoke)
#   make smoke  run the demo twice and fail if the second run changed any byte under .out/
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster
export OPENBLAS_NUM_THREADS := 1

.PHONY: demo test smoke lint dev bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The numba loops compiled once per environment and whenever the code changes (see
# recsys_assets/warmup.py), so that a first real run does not pay 20-30 s of compiling.
WARM := $(VENV)/.warm
$(WARM): $(STAMP) $(wildcard recsys_assets/*.py recsys_assets/*/*.py)
	OPENBLAS_NUM_THREADS=1 $(VENV)/bin/python -m recsys_assets.warmup
	touch $(WARM)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: $(WARM) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/recsys-assets run --config configs/env/local.json --start 2026-01-01
	$(VENV)/bin/recsys-assets run --config configs/env/sample.json --start 2026-01-01 --end 2026-01-03

test: $(WARM) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/ruff check recsys_assets recsys_assets_tests benchmarks testdata
	$(VENV)/bin/ruff format --check recsys_assets recsys_assets_tests benchmarks testdata
	$(MAKE) --no-print-directory smoke
	$(VENV)/bin/pytest -q

# Every file under .out/ but the embedded database's folder (SPEC §8), with its SHA-256.
HASH_OUT := find .out -path '.out/*/pg' -prune -o -type f -print0 | sort -z | xargs -0 sha256sum

smoke: $(WARM) $(DAGSTER_HOME)/dagster.yaml
	$(MAKE) --no-print-directory demo > $(VENV)/smoke-1.log 2>&1 || (cat $(VENV)/smoke-1.log; exit 1)
	$(HASH_OUT) > $(VENV)/smoke-1.sha256
	$(MAKE) --no-print-directory demo > $(VENV)/smoke-2.log 2>&1 || (cat $(VENV)/smoke-2.log; exit 1)
	$(HASH_OUT) > $(VENV)/smoke-2.sha256
	diff $(VENV)/smoke-1.sha256 $(VENV)/smoke-2.sha256 \
		|| (echo "smoke: the second demo run changed the files above"; exit 1)
	@echo "smoke: the demo ran twice; $$(wc -l < $(VENV)/smoke-2.sha256) files under .out/ unchanged"

dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -m recsys_assets

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run_canonical.py --events 5000000

clean:
	rm -rf .out .dagster
