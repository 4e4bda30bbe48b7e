# make setup: the environment from the lock file (EXTRAS="s3" or "gcs" adds a DVC remote's
# plugin, locked too) · make demo: the whole pipeline · make test
SHELL := /bin/bash
# The interpreter that installs uv: the machine's, not the venv's (which has no pip).
SYSTEM_PYTHON := $(shell command -v python3)
export PATH := $(CURDIR)/.venv/bin:$(PATH)
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: setup demo test lint typecheck flow clean-data seed-experiment

setup:
	@[ -x "$(UV)" ] || $(SYSTEM_PYTHON) -m pip install --quiet --user "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode $(foreach e,$(EXTRAS),--extra $(e))
	@echo "environment ready in .venv/ (source .venv/bin/activate to use 'codec', 'dvc', 'mlflow', 'prefect')"

demo:
	dvc repro
	-dvc push
	@echo
	dvc metrics show

# The same pipeline once through the Prefect flow (docs/prefect.md). With PREFECT_API_URL unset,
# Prefect starts a temporary local server for the run; on a busy machine it needs more than the
# default 20 s to come up. Extra flow options: make flow FLOW_ARGS="--set normalize.mode=peak".
flow:
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=$${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120} \
		python -m flows.pipeline run $(FLOW_ARGS)

# The seed's claim as a grid (experiments/seed_grid.py): normalize.mode peak/rms/lufs x the
# seed's loss recipe and ours, each a queued DVC experiment (gate off, stops after evaluate),
# logged to ./mlflow.db; writes experiments/seed_grid.{md,csv,png}. About 6 x 5 min on 2 cores.
seed-experiment:
	python experiments/seed_grid.py $(SEED_GRID_ARGS)

lint:
	ruff check codec flows tests benchmarks experiments

typecheck:
	mypy codec flows

test: lint typecheck
	python -m pytest -q
