# Two commands work on a fresh machine: `make demo` and `make test` (each creates .venv and installs).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_PATIENTS ?= 120
DEMO_SEED ?= 0
export DO_NOT_TRACK := true
export KEDRO_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: install demo demo-data test test-fast lint clean-demo bench bench-gpu

# torch is named first so pip takes the local CPU wheel instead of a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo-data: install
	$(BIN)/generatect demo-data --out data/01_raw --patients $(DEMO_PATIENTS) --seed $(DEMO_SEED) --broken

demo: demo-data
	$(BIN)/kedro run --env demo
	@echo "Demo done. Outputs under data/; runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

# Every benchmark → benchmarks/results/<machine>.{json,md}; BENCH_ARGS=--quick for small sizes (minutes on 2 cores).
bench: install
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

bench-gpu: install
	$(BIN)/python benchmarks/run_all.py --device cuda $(BENCH_ARGS)

clean-demo:
	find data -mindepth 2 ! -name .gitkeep -delete
	rm -rf mlflow.db mlflow.db.*.lock mlartifacts
