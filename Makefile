# batchscore developer commands. `make` alone lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DATE ?= 2026-11-21
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.DEFAULT_GOAL := help
.PHONY: help venv demo walmart test test-fast check format bench bench-quick bench-10m bench-100m bench-evaluation dist clean

help: ## list the commands
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11"; exit 2; }
	@command -v java >/dev/null || { echo "error: java not found; install a Java 17 runtime (apt-get install openjdk-17-jre-headless)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create the virtual environment with every dependency

demo: $(STAMP) ## build demo data and models, run the demo job, query the predictions
	$(PY) -m batchscore.datasets.demo demo conf/demo.yaml
	$(PY) -m batchscore run conf/demo.yaml --run-date $(RUN_DATE)
	$(PY) -m batchscore sql "SELECT model, count(*) AS rows, round(avg(prediction), 4) AS avg_prediction, count(DISTINCT label) AS labels FROM preds WHERE ds = '$(RUN_DATE)' GROUP BY model ORDER BY model" --table preds=demo/out/predictions
	$(PY) -m batchscore sql "SELECT model, feature, metric, round(value, 4) AS value FROM mon WHERE run_date = '$(RUN_DATE)' AND kind = 'prediction' AND metric IN ('rows', 'mean', 'null_rate') ORDER BY model, metric" --table mon=demo/out/monitoring
	$(PY) -m batchscore report --monitoring demo/out/monitoring --job retail_daily --out demo/out/report.html

walmart: $(STAMP) ## build the Walmart star schema and score all 421,570 fact rows
	$(PY) -m batchscore.datasets.morpheus walmart demo/walmart conf/walmart.yaml --shared ../shared/data/morpheus --spark
	$(PY) -m batchscore run conf/walmart.yaml

test: $(STAMP) ## run the test suite (every tier), the 15 slowest tests listed
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP) ## the unit tier only: no Spark, under 2 minutes
	$(PY) -m pytest -q tests/unit

check: $(STAMP) ## format check, lint, type-check
	$(VENV)/bin/ruff format --check batchscore tests jobs bench
	$(VENV)/bin/ruff check batchscore tests jobs bench
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff format batchscore tests jobs bench
	$(VENV)/bin/ruff check --fix batchscore tests jobs bench

bench: $(STAMP) ## benchmarks (ratios against baselines in the same process)
	$(PY) -m bench.run

bench-quick: $(STAMP) ## a shorter benchmark pass
	$(PY) -m bench.run --quick

bench-evaluation: $(STAMP) ## batchscore evaluate: 30 dates x 3 models over 10M labelled rows
	$(PY) -m bench.run --only bench.evaluation --out bench/RESULTS-evaluation.md

bench-10m: $(STAMP) ## k=32 vs k=1 GLMs on a 10M-row table (about 10 minutes)
	$(PY) -m bench.run --only bench.glms_10m --out bench/RESULTS-10M.md

bench-100m: $(STAMP) ## 100M-row star, GLM + 100 trees: rows/s at 10M and 100M, memory, exactness (~30 min, 12 GB disk)
	$(PY) -m bench.run --only bench.scale_100m --out $(if $(BENCH_100M_ROWS),bench/out/RESULTS-100M.$(BENCH_100M_ROWS).md,bench/RESULTS-100M.md)

dist: $(STAMP) ## build the wheel into dist/ (shipping it to executors: docs/clusters.md)
	$(PY) -m build --wheel --no-isolation --outdir dist .

clean: ## remove generated data, outputs and caches (keeps the venv)
	rm -rf demo spark-warehouse metastore_db derby.log .pytest_cache .mypy_cache .ruff_cache
