# make setup: the environment from the lock file (EXTRAS="s3" or "gcs" adds a DVC remote's
# plugin, locked too) · make demo: the whole pipeline · make test
SHELL := /bin/bash
# The interpreter that installs uv: the machine's, not the venv's (which has no pip).
SYSTEM_PYTHON := $(shell command -v python3)
export PATH := $(CURDIR)/.venv/bin:$(PATH)
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: setup params demo test lint typecheck flow prefect-setup clean-data seed-experiment compare

setup:
	@[ -x "$(UV)" ] || $(SYSTEM_PYTHON) -m pip install --quiet --user "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode $(foreach e,$(EXTRAS),--extra $(e))
	@echo "environment ready in .venv/ (source .venv/bin/activate to use 'codec', 'dvc', 'mlflow', 'prefect')"

# params.yaml from conf/ (DVC's Hydra composition, what every `dvc exp run` does before it runs):
# after editing conf/, for `dvc repro`. PARAMS="train=gpu promote=gpu" composes a profile.
params:
	python -c "import sys; from dvc.utils.hydra import compose_and_dump; \
		compose_and_dump('params.yaml', '$(CURDIR)/conf', None, 'config', '', sys.argv[1:])" $(PARAMS)

demo: params
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

# Once per Prefect server (PREFECT_API_URL): every work pool prefect.yaml's deployments use, and
# with ALERT_WEBHOOK=<url> an automation that POSTs there when a pipeline run fails or crashes
# (flows/ops.py; a Slack or email block made in the UI: python -m flows.ops alert --block TYPE/NAME).
prefect-setup:
	python -m flows.ops pools
	@if [ -n "$(ALERT_WEBHOOK)" ]; then python -m flows.ops alert --webhook "$(ALERT_WEBHOOK)"; fi

# Experiments side by side in a terminal (dvc exp show): the params that differ and the headline
# metrics, without the columns of code and data hashes; fits 120 columns (tests/test_dvc_pipeline.py).
# More: make compare COMPARE_ARGS="-A" (every commit), COMPARE_ARGS="--sort-by worst_pesq".
COMPARE_DROP := Created|(codec|data|models|gx|reports)(/.*)?
compare:
	dvc exp show --no-pager --only-changed --drop '$(COMPARE_DROP)' $(COMPARE_ARGS)

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
