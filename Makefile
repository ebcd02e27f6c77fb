# Two entry points on a fresh machine (each sets itself up and is idempotent):
#   make demo   run the graph on the bundled samples and print where the outputs are
#   make test   set up the dev environment and run the whole test suite (+ ruff, + smoke)
#   make smoke  run the demo twice and fail if the second run changed any byte under .out/
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster
export OPENBLAS_NUM_THREADS := 1

.PHONY: demo test smoke lint dev bench clean redis-server chromium broker workers docs docs-serve

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

# Debian's redis-server, the Celery broker of the distributed test: installed when it is not on
# the PATH and apt-get is there (CI runs as root); otherwise that test skips, saying why.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
		|| echo "redis-server could not be installed with apt-get; the distributed test will skip"

# Debian's chromium, the headless browser of recsys_assets_tests/test_browser.py (driven by
# Playwright, which cannot download its own browser here): installed like redis-server.
chromium:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed with apt-get; the browser test will skip"

test: $(WARM) $(DAGSTER_HOME)/dagster.yaml redis-server chromium
	$(VENV)/bin/ruff check recsys_assets recsys_assets_tests benchmarks testdata
	$(VENV)/bin/ruff format --check recsys_assets recsys_assets_tests benchmarks testdata
	$(MAKE) --no-print-directory docs
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

# The docs site (mkdocs.yml, docs/): a broken link, a missing page or a reference page that no
# longer generates fails the build. `make docs-serve` serves it on http://127.0.0.1:8000.
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := true
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet
	@echo "docs: built .site/ ($$(find .site -name '*.html' | wc -l) pages)"

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -m recsys_assets

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run_canonical.py --events 5000000

# Distributed setup (README "Deployment"): a broker, and N Celery workers on this machine,
# each with its own DAGSTER_HOME under $(WORKERS_HOME) holding deploy/dagster.yaml. Every
# worker machine needs the same code, RECSYS_CONFIG (data locations on S3), DAGSTER_PG_URL,
# the broker URLs and the compute-log bucket variables of deploy/dagster.yaml.
N ?= 2
REDIS_PORT ?= 6379
WORKERS_HOME ?= $(CURDIR)/.workers
CELERY_CONFIG ?= deploy/celery.yaml
export RECSYS_CELERY_BROKER ?= redis://localhost:$(REDIS_PORT)/0
export RECSYS_CELERY_BACKEND ?= redis://localhost:$(REDIS_PORT)/1

broker: redis-server
	mkdir -p $(WORKERS_HOME)/redis
	redis-server --port $(REDIS_PORT) --dir $(WORKERS_HOME)/redis --save '' --appendonly no

workers: $(STAMP)
	@test -n "$$DAGSTER_PG_URL" || (echo "workers: set DAGSTER_PG_URL (deploy/dagster.yaml)"; exit 2)
	@trap 'kill 0' INT TERM; for i in $$(seq 1 $(N)); do \
		mkdir -p $(WORKERS_HOME)/w$$i && cp deploy/dagster.yaml $(WORKERS_HOME)/w$$i/dagster.yaml; \
		(cd $(WORKERS_HOME)/w$$i && DAGSTER_HOME=$(WORKERS_HOME)/w$$i RECSYS_EXECUTOR=celery \
			PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
			RECSYS_CELERY_CONFIG=$(CURDIR)/$(CELERY_CONFIG) \
			$(CURDIR)/$(VENV)/bin/dagster-celery worker start -A dagster_celery.app \
			-y $(CURDIR)/$(CELERY_CONFIG) -n w$$i -- --concurrency=1 --without-gossip --without-mingle) & \
	done; wait

clean:
	rm -rf .out .dagster
