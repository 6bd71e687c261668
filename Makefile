# One entry point per thing a person does. Every target sets up the virtual
# environment from the pinned lock file first (once; again when the lock changes).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# The network is closed: no telemetry, no analytics, no hub downloads.
export KEDRO_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup run test viz viz-build lock clean-data

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(VENV)/.installed

## The main job: the whole default DAG on the embedded world.
run: setup
	$(BIN)/kedro run

## The test suite (tiny sizes from the Kedro `test` environment).
test: setup
	$(BIN)/pytest -n 2 --durations=10

## The DAG in kedro-viz, served on loopback.
viz: setup
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

## A static kedro-viz site in ./build.
viz-build: setup
	$(BIN)/kedro viz build

## Re-pin every dependency after changing pyproject.toml.
lock: setup
	$(BIN)/pip install --quiet -e '.[test]'
	# torch's local label (+cpu) is dropped so the pin matches the CPU wheel on disk and on PyPI alike
	$(BIN)/pip freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/' | sort > requirements.lock

clean-data:
	find data -type f ! -name .gitkeep -delete
