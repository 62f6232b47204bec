# The two commands: `make demo` (the whole nightly pipeline on the embedded default data) and
# `make test` (the test suite; .ci/run runs exactly this). Both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT := 60
export AIRFLOW__API__HOST ?= 127.0.0.1
export AIRFLOW__API__PORT ?= 8080
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export RECSYS_DATA_DIR ?= $(CURDIR)/data
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv airflow-db demo test test-fast prod-up prod-down prod-status prod-test airflow mlflow-ui mlflow-server browser serve bench bench-smoke bench-test bench-scoring bench-evaluation bench-reader bench-stages lock lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "uv==$(UV_VERSION)"
	# --compile-bytecode: every task process imports Airflow, MLflow and Great Expectations;
	# without .pyc files (uv's default, or PYTHONDONTWRITEBYTECODE) each import recompiles them
	# from source: seconds per task (measured: `import great_expectations` 7.5 s -> 1.5 s)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -r requirements.txt -c constraints.txt
	# the project itself, editable and without dependencies (the pins above are the only ones):
	# puts the `recsys` command in $(VENV)/bin
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	touch $@

airflow-db: venv
	@mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)

demo: airflow-db
	$(PY) -m include.recsys.cli.demo $(DEMO_ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not e2e and not ui and not bench and not prod" $(PYTEST_ARGS)

# The production-like stack on this machine, without Docker (deploy/local/stack.py): databases
# $(PROD_DB_PREFIX)_{airflow,mlflow,celery} created on PROD_PG_URL, Redis broker PROD_REDIS_URL,
# airflow db migrate, api-server, scheduler, dag-processor, triggerer, two Celery workers and
# mlflow server, configured from deploy/airflow.env + deploy/mlflow.env (what docker-compose
# reads). `make prod-down PROD_DROP=1` also drops the databases. State, logs: $(PROD_STATE).
PROD_STATE ?= $(AIRFLOW_HOME)/prod
PROD_PG_URL ?= postgresql+psycopg2://postgres@127.0.0.1:5432
PROD_REDIS_URL ?= redis://127.0.0.1:6379/0
PROD_DB_PREFIX ?= recsys_prod
PROD_ARGS = --state $(PROD_STATE) --pg-url $(PROD_PG_URL) --redis-url $(PROD_REDIS_URL) --db-prefix $(PROD_DB_PREFIX)
prod-up: venv
	$(PY) -m deploy.local.stack up $(PROD_ARGS)

prod-down: venv
	$(PY) -m deploy.local.stack down $(PROD_ARGS) $(if $(PROD_DROP),--drop)

prod-status: venv
	$(PY) -m deploy.local.stack status $(PROD_ARGS)

# the production-mode tests alone (also part of `make test`): their own private PostgreSQL and
# Redis, e2e runs and fault injection; prints each case's wall time
prod-test: venv
	$(PY) -m pytest -m prod tests/prod $(PYTEST_ARGS)

airflow: airflow-db
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH airflow standalone

# the HTTP reader on loopback; with RECSYS_READER_TOKEN(_FILE) set it requires that bearer token,
# without one it runs --no-auth (allowed on 127.0.0.1 only)
serve: venv
	$(PY) -m include.recsys.tables.serve --host 127.0.0.1 --port $${SERVE_PORT:-8000} $$([ -n "$$RECSYS_READER_TOKEN$$RECSYS_READER_TOKEN_FILE" ] || echo --no-auth)

# The whole nightly run (real DAG via dag.test) per task + floors + stages alone; writes
# bench/results/pipeline-$(PRESET)-<date>.{json,md}. PRESET: s, m, l, tiny, default, movielens.
PRESET ?= m
BENCH_DIR ?= /tmp/recsys-bench
bench: venv
	$(PY) -m bench.pipeline --preset $(PRESET) --work $(BENCH_DIR) --out bench/results $(BENCH_ARGS)

# CI smoke run of the harness on preset s (fails only if the harness breaks, never on timings)
bench-smoke: venv
	$(PY) -m bench.pipeline --preset s --work $(BENCH_DIR)-smoke --no-implicit-recommend

bench-test: venv
	$(PY) -m pytest -m bench tests/bench $(PYTEST_ARGS)

bench-scoring: venv
	$(PY) -m bench.scoring --out bench/results

# offline metrics (k = 10, 20, 50, 100) vs implicit's ranking_metrics_at_k (one k), one process
bench-evaluation: venv
	$(PY) -m bench.evaluation --out bench/results

bench-reader: venv
	$(PY) -m bench.reader

bench-stages: venv
	$(PY) -m bench.stages --preset $(PRESET)

mlflow-ui: venv
	@mkdir -p $(RECSYS_DATA_DIR)/mlflow
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(RECSYS_DATA_DIR)/mlflow/mlflow.db \
		--default-artifact-root $(RECSYS_DATA_DIR)/mlflow/artifacts --host 127.0.0.1 --port 5000

# MLflow tracking server (what docker-compose runs), local: SQLite store (the same DB as the
# local mode) + artifacts served from data/mlflow. Point Airflow at it with
#   RECSYS_MLFLOW_TRACKING_URI=http://127.0.0.1:5000 make airflow
MLFLOW_PORT ?= 5000
mlflow-server: venv
	@mkdir -p $(RECSYS_DATA_DIR)/mlflow/artifacts
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 2 \
		--backend-store-uri sqlite:///$(RECSYS_DATA_DIR)/mlflow/mlflow.db \
		--serve-artifacts --default-artifact-root mlflow-artifacts:/ \
		--artifacts-destination $(RECSYS_DATA_DIR)/mlflow/artifacts

# headless Chromium + chromedriver (Debian packages) for the browser test in tests/ui
browser:
	.ci/install-browser

lock: venv
	$(VENV)/bin/uv pip compile requirements.txt --python-version 3.11 -o constraints.txt --quiet

clean:
	rm -rf $(RECSYS_DATA_DIR) $(AIRFLOW_HOME)
