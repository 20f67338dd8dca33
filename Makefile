# flrt: set-up, tests and benchmarks. Every target is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint typecheck pytest bench demo clean

setup: $(STAMP)

# Re-install only when the pinned lock or the project metadata changes.
$(STAMP): requirements/dev.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

# A whole study on this machine: provisioning, a server and three hospitals as processes over
# mutual TLS, logistic regression then an MLP, cross-site validation. Kits, logs and results stay
# in demo-workspace/ (a new run replaces it).
demo: setup
	rm -rf demo-workspace
	$(BIN)/flrt demo --workspace demo-workspace

# Each benchmark ends with one JSON line of figures.
bench: setup
	$(BIN)/python bench/bus.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/resume.py
	$(BIN)/python bench/provision.py
	$(BIN)/python bench/rounds.py --sites 8 --model-mib 0.4 --rounds 20
	$(BIN)/python bench/rounds.py --sites 4 --model-mib 100 --rounds 5

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
