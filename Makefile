# One entry point per thing a person does. Every target sets up the virtual
# environment from the pinned lock file first (once; again when the lock changes).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# The network is closed: no telemetry, no analytics, no hub downloads.
export KEDRO_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
# Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning
# threads fight each other and training runs several times slower.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup run repro sweep dvc-yaml test lint ui viz viz-build lock clean-data bench bench-trl bench-gpu

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(VENV)/.installed

## The main job: the whole default DAG on the embedded world. Kedro's ParallelRunner
## runs DPO beside reward model -> PPO (both need only the SFT model), one process per
## core; each node's torch threads are the cores it shares with the compute nodes the DAG
## lets run beside it (alignops.pipelines.threads): SFT and evaluation use every core, the
## parallel branch one each. OMP_NUM_THREADS, when set, wins. `kedro run` alone is sequential.
RUNNER ?= ParallelRunner
run: setup
	$(BIN)/kedro run --runner $(RUNNER)

## The same DAG through DVC: one `alignops-run --pipelines <stage>` (a `kedro run` forked from a warm
## interpreter, alignops.warm) per stage of dvc.yaml, rerunning only the stages whose data, code or
## parameters changed since dvc.lock (DVC_ARGS, e.g. "-s ppo"). Stages run one at a time, each with
## every core (`make run` overlaps DPO with reward -> PPO).
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro $(DVC_ARGS)

## A kl_coef sweep in one command: one queued `dvc exp run` per value of KL_COEFS, all of them
## run, then alignops-report overlays their reward-KL frontiers on one page
## (data/08_reporting/sweep_report.html), a row and an alarm verdict per run.
KL_COEFS ?= 0 0.02 0.05 0.1
comma := ,
empty :=
space := $(empty) $(empty)
sweep: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run --queue -S 'conf/base/parameters_ppo.yml:ppo.kl_coef=$(subst $(space),$(comma),$(strip $(KL_COEFS)))'
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run --run-all
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/alignops-report --last $(words $(KL_COEFS))

## Rewrite dvc.yaml from the Kedro pipelines and catalog (after adding a stage or moving a path;
## DVC_ENV=<env> for an environment of your own, e.g. one pointing ingestion at your file).
dvc-yaml: setup
	$(BIN)/alignops-dvc $(if $(DVC_ENV),--env $(DVC_ENV))

## The test suite (tiny sizes from the Kedro `test` environment). worksteal: an idle worker takes
## queued tests from the other, so the few heavy ones (servers, browsers) do not pile up at the end.
test: setup
	$(BIN)/pytest -n 2 --dist worksteal --durations=10

## The linter, configured under [tool.ruff] in pyproject.toml (`ruff check --fix` for the
## fixable findings). Formatting is not checked: the code predates `ruff format`.
lint: setup
	$(BIN)/ruff check .

## The MLflow UI on loopback: runs, per-step curves, artifacts, the model registry.
UI_PORT ?= 5000
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(UI_PORT) --workers 2

## The DAG in kedro-viz, served on loopback. --include-hooks: the project hook wires __default__
## for the environment's data source (`kedro viz run --env hh_rlhf --include-hooks` draws the files DAG).
viz: setup
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser --include-hooks

## A static kedro-viz site in ./build.
viz-build: setup
	$(BIN)/kedro viz build --include-hooks

## Re-pin every dependency after changing pyproject.toml.
lock: setup
	$(BIN)/pip install --quiet -e '.[test]'
	# torch's local label (+cpu) is dropped so the pin matches the CPU wheel on disk and on PyPI alike
	$(BIN)/pip freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/' | sort > requirements.lock

## Throughput of our training loops at two sizes, each in its own process: the default
## configuration -> data/08_reporting/bench.json, a 25M-parameter Llama on 256-token rows ->
## bench_25m.json, each with this CPU's matmul FLOP/s and the model FLOP/s of SFT, reward and
## DPO steps (see bench/README.md). Needs the world's data
## (`kedro run --pipelines data_generation,ingestion,data_validation`). BENCH_ARGS passes
## options to bench/run.py, e.g. BENCH_ARGS="--size tiny --threads 1 --stages ppo".
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# TRL in virtual environments of its own: its pins may differ from our lock (shared
# packages are pinned to the lock's versions). torch stays the CPU wheel on this disk.
TRL_VENV ?= .venv-trl
TRL_PPO_VENV ?= .venv-trl-ppo

$(TRL_VENV)/.installed: bench/requirements-trl.txt requirements.lock
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements-trl.txt
	touch $@

$(TRL_PPO_VENV)/.installed: bench/requirements-trl-ppo.txt requirements.lock
	$(PYTHON) -m venv $(TRL_PPO_VENV)
	$(TRL_PPO_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements-trl-ppo.txt
	touch $@

## TRL's trainers on the same workload, size by size (the sizes `make bench` runs) ->
## data/08_reporting/bench_trl[_<size>].json, and the speedups into bench[_<size>].json.
## TRL 1.16 for the reward model and DPO; TRL 1.12, the last release with a PPO trainer,
## for PPO. Use the same BENCH_ARGS as for `make bench`.
bench-trl: setup $(TRL_VENV)/.installed $(TRL_PPO_VENV)/.installed
	set -e; for size in $$($(BIN)/python bench/run.py --list-sizes $(BENCH_ARGS) | sed -n 's/^bench-size: //p'); do \
		$(BIN)/python bench/run.py --export-only $(BENCH_ARGS) --size $$size; \
		$(TRL_VENV)/bin/python bench/trl_baseline.py --stage reward --size $$size; \
		$(TRL_VENV)/bin/python bench/trl_baseline.py --stage dpo --size $$size; \
		$(TRL_PPO_VENV)/bin/python bench/trl_baseline.py --stage ppo --size $$size; \
		$(BIN)/python bench/run.py --merge-only $(BENCH_ARGS) --size $$size; \
	done

## bf16 throughput, model FLOPs utilisation and peak memory on the GPU(s) of this machine
## -> data/08_reporting/bench_gpu.json (see bench/GPU.md). One GPU, then all of them.
bench-gpu: setup
	$(BIN)/python bench/gpu.py $(BENCH_GPU_ARGS)

clean-data:
	find data -type f ! -name .gitkeep -delete
