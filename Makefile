# Every target does its own set-up on a fresh machine: a virtual environment from PyPI,
# Azurite from npm (package-lock.json), checkov in a venv of its own.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test install clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@echo "==> Python packages into $(VENV) (pip, from requirements-dev.txt)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .venv-* node_modules .pytest_cache .hypothesis
