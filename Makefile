# voxwire — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv serve test unit lint proto bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "voxwire: installing into $(VENV) (the first time takes about a minute and a half)..."
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,dev,torch]'
	@touch $(STAMP)

venv: $(STAMP) ## Create or update .venv with the server, client and dev tools

serve: $(STAMP) ## Set up and run the server on 127.0.0.1:50051 (LISTEN=HOST:PORT to change)
	$(VENV)/bin/voxwire-server --listen $(LISTEN)

test: $(STAMP) ## Set up and run lint, type checks and all tests
	$(MAKE) --no-print-directory lint
	@scripts/ensure-services.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

unit: $(STAMP) ## Run the unit tests only
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check client server tests benchmarks
	$(VENV)/bin/ruff format --check client server tests benchmarks
	$(VENV)/bin/mypy

proto: $(STAMP) ## Regenerate client/voxwire/v1 from protos/
	scripts/gen-proto.sh client

bench: $(STAMP) ## Run the benchmarks (loopback only, bounded)
	$(PY) benchmarks/asr_accuracy.py
	$(PY) benchmarks/recognize_latency.py
	$(PY) benchmarks/stream_state.py
	$(PY) benchmarks/resume.py
	$(PY) benchmarks/torch_decoder.py
	$(PY) benchmarks/fingerprint_quality.py
	$(PY) benchmarks/cache_lookup.py
	$(PY) benchmarks/cache_workload.py
	$(PY) benchmarks/tts_cache_compression.py
	$(PY) benchmarks/asr_load.py
	$(PY) benchmarks/batch_scaling.py
	$(PY) benchmarks/tts_load.py
	$(PY) benchmarks/soak.py

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
