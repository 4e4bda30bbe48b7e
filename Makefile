# make setup: the environment from the lock file · make demo: the whole pipeline · make test
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: setup demo test lint typecheck flow clean-data

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet --user "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode
	@echo "environment ready in .venv/ (source .venv/bin/activate to use 'codec', 'dvc', 'mlflow', 'prefect')"

demo:
	dvc repro
	-dvc push
	@echo
	dvc metrics show

lint:
	ruff check codec flows tests benchmarks

typecheck:
	mypy codec flows

test: lint typecheck
	python -m pytest -q
