# Orchestrator developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# aws-sam-cli pins its own versions of boto3, cfn-lint and friends, so it lives apart from .venv.
SAM_VENV ?= .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed

.PHONY: help setup sam-tools demo test test-fast lint bench bench-compare validate build deploy clean fuzz attack

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

test: lint $(NODE_STAMP) $(SAM_STAMP) ## the gate CI runs: lint, mypy --strict, then the whole test suite, a worker per core
	$(BIN)/pytest -q -n auto

test-fast: $(STAMP) $(NODE_STAMP) ## run the tests not marked slow
	$(BIN)/pytest -q -n auto -m 'not slow'

lint: $(STAMP) ## ruff (rules and format) and mypy --strict on the package and the handlers
	$(BIN)/ruff check shared tests functions bench
	$(BIN)/ruff format --check shared tests functions bench
	$(BIN)/mypy
	for handler in functions/*/app.py; do MYPYPATH=shared $(BIN)/mypy --strict $$handler || exit 1; done

bench: $(STAMP) ## run the benchmarks and write bench/RESULTS.md
	$(BIN)/python bench/run.py

BASE ?= HEAD
bench-compare: $(STAMP) ## the engine's workloads on this tree against a commit, in one run: make bench-compare BASE=<ref>
	$(BIN)/python bench/compare.py --base $(BASE)

validate: $(STAMP) ## validate every bundled pipeline
	$(BIN)/orchestrator validate pipelines/*.yaml

build: $(STAMP) $(SAM_STAMP) ## build the SAM app into .aws-sam/ with the Lambda runtime's Python (3.12)
	$(BIN)/orchestrator build --check
	SAM_CLI_TELEMETRY=0 scripts/with-lambda-python $(SAM_VENV)/bin/sam build

deploy: build ## deploy the built app to the AWS account of your credentials (asks for settings once)
	SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam deploy --guided

clean: ## remove the virtual environment and local state
	rm -rf $(VENV) $(SAM_VENV) node_modules .aws-sam .orchestrator .pytest_cache .mypy_cache .ruff_cache

# `make fuzz EXAMPLES=500`: that many random pipelines on both engines (CI runs a fixed few),
# then that many drawn pipeline files, inputs files and -i values through the CLI;
# FEATURES=all (or flags of tests/conformance/strategies.py's Features) brings back the known
# divergences. A failure prints the shrunk pipeline and @reproduce_failure to replay it.
EXAMPLES ?= 200
FEATURES ?=
fuzz: $(STAMP) ## differential fuzzer, at random: make fuzz EXAMPLES=500 [FEATURES=all]
	ORCHESTRATOR_FUZZ_EXAMPLES=$(EXAMPLES) ORCHESTRATOR_FUZZ_RANDOM=1 ORCHESTRATOR_FUZZ_FEATURES=$(FEATURES) \
		$(BIN)/pytest -q -p no:cacheprovider --timeout=0 --hypothesis-show-statistics \
		tests/conformance/test_differential_fuzz.py::test_both_engines_agree_on_drawn_pipelines
	ORCHESTRATOR_FUZZ_EXAMPLES=$(EXAMPLES) ORCHESTRATOR_FUZZ_RANDOM=1 \
		$(BIN)/pytest -q -p no:cacheprovider --timeout=0 --hypothesis-show-statistics tests/security/test_cli_fuzz.py

attack: $(STAMP) ## the whole attack suite: every damaged state folder against every command
	ORCHESTRATOR_ATTACKS=all $(BIN)/pytest -q -p no:cacheprovider tests/security
