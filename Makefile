# Orchestrator developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# aws-sam-cli pins its own versions of boto3, cfn-lint and friends, so it lives apart from .venv.
SAM_VENV ?= .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed

.PHONY: help setup sam-tools demo test test-fast lint typecheck bench build clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

NODE_STAMP := node_modules/.installed

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP) ## create .venv and node_modules with the development tools

$(SAM_STAMP):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli
	touch $(SAM_STAMP)

sam-tools: $(SAM_STAMP) ## install aws-sam-cli into .venv-sam for the sam validate/build tests

demo: $(STAMP) ## run the bundled offline demo pipeline on the embedded engine
	$(BIN)/orchestrator run pipelines/demo.yaml -i topic=serverless

test: $(STAMP) $(NODE_STAMP) $(SAM_STAMP) ## run the whole test suite
	$(BIN)/pytest -q

test-fast: $(STAMP) $(NODE_STAMP) ## run the tests not marked slow
	$(BIN)/pytest -q -m 'not slow'

lint: $(STAMP) ## ruff and mypy --strict
	$(BIN)/ruff check shared tests functions bench
	$(BIN)/ruff format --check shared tests functions bench
	$(BIN)/mypy
	for handler in functions/*/app.py; do MYPYPATH=shared $(BIN)/mypy --strict $$handler || exit 1; done

bench: $(STAMP) ## run the benchmarks and write bench/RESULTS.md
	$(BIN)/python bench/run.py

build: $(STAMP) ## validate every bundled pipeline
	$(BIN)/orchestrator validate pipelines/*.yaml

clean: ## remove the virtual environment and local state
	rm -rf $(VENV) node_modules .orchestrator .pytest_cache .mypy_cache .ruff_cache
