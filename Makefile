# Every target does its own set-up on a fresh machine: a virtual environment from PyPI,
# Azurite from npm (package-lock.json), checkov in a venv of its own.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

.PHONY: test install clean run demo

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@echo "==> Python packages into $(VENV) (pip, from requirements-dev.txt)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --disable-pip-version-check --progress-bar off -r requirements-dev.txt -e .
	@touch $(STAMP)

test: install $(NPM_STAMP) $(CHECKOV_STAMP)
	$(VENV)/bin/ruff check .
	CHECKOV=$(abspath $(CHECKOV_VENV)/bin/checkov) $(PY) -m pytest

# checkov pins many packages of its own, so it gets a venv of its own.
$(CHECKOV_STAMP):
	@echo "==> checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV) (own venv: it pins many packages)"
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "checkov==$(CHECKOV_VERSION)"
	@touch $(CHECKOV_STAMP)

clean:
	rm -rf $(VENV) .venv-* node_modules .pytest_cache .hypothesis .devstack

# Azurite (queue service) for the local stack and the end-to-end tests.
$(NPM_STAMP): package.json package-lock.json
	@echo "==> Azurite into node_modules (npm ci, from package-lock.json)"
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $(NPM_STAMP)

# The whole app on this machine: Azurite, the emulators and the local Functions runner; Ctrl-C stops it.
run: install $(NPM_STAMP)
	@$(PY) -m devstack.stack run

# Start the stack, cancel jobs over HTTP and through the queue, print the records, stop, exit 0.
demo: install $(NPM_STAMP)
	@$(PY) -m devstack.demo

# The cancel path against raw HTTP, the openai SDK and a naive script, a queue drain through the local runner
# under simulated latency and rate limits, and cold starts in both auth modes (about 15 minutes on 2 cores):
# writes docs/benchmarks.md and docs/bench/ (results.json, throughput.png, drain.png). A smoke run is in make test.
.PHONY: bench
bench: install $(NPM_STAMP)
	$(PY) -m bench.run

# The chaos run (docs/reliability.md): 5,000 messages through the local stack while upstream fails a third
# of its calls, Key Vault is down and Azurite restarts; stops by itself, writes docs/chaos/last-run.json.
.PHONY: chaos
chaos: install $(NPM_STAMP)
	@$(PY) -m devstack.chaos --messages 5000 --output docs/chaos/last-run.json
