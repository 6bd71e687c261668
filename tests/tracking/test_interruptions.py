"""A killed ``kedro run`` in MLflow: SIGTERM ends its run KILLED at once, a SIGKILLed one is
closed by the next run, and the same command run again continues the run: one run, one
continuous per-step history, FINISHED once. Real processes, real signals, a real sqlite store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from alignops.tracking.interruptions import CONTINUED_TAG, PROCESS_TAG, process_alive, this_process
from tests.helpers import KEDRO, environment_without_mlflow_run

STEPS = 150  # ~15 a second here: long enough to be killed twice on the way
COMMAND = ["run", "--pipelines", "ppo", "--env", "test", "--params", f"ppo.steps={STEPS},ppo.checkpoint_every=30"]


def _start(project: Path) -> subprocess.Popen:
    env = {**environment_without_mlflow_run(), "OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "true",
           "COLUMNS": "300"}  # rich wraps log lines at the terminal's width
    log = (project / f"kedro_{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen([str(KEDRO), *COMMAND], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)


def _kill_after_checkpoint(process: subprocess.Popen, checkpoint: Path, sig: int) -> None:
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps, some of them sent to MLflow, none checkpointed
    process.send_signal(sig)
    process.wait(timeout=60)


def _runs(project: Path):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("alignops")
    return client, client.search_runs([experiment.experiment_id])


def test_a_killed_run_is_closed_killed_and_the_same_command_continues_it_to_one_finished_run(project_after):
    project = project_after("reward")
    checkpoints = project / "data" / "06_models" / "checkpoints" / "ppo"

    first = _start(project)
    _kill_after_checkpoint(first, checkpoints / "step_00000030", signal.SIGKILL)
    client, (run,) = _runs(project)
    assert run.info.status == "RUNNING"  # nothing can run on SIGKILL: the next run closes it

    second = _start(project)  # continues the run from step 30, and is stopped politely
    _kill_after_checkpoint(second, checkpoints / "step_00000090", signal.SIGTERM)
    assert second.returncode == -signal.SIGTERM
    client, (run,) = _runs(project)
    assert run.data.tags[CONTINUED_TAG] == "1"
    if run.info.status != "KILLED":
        # the documented fallback: a SIGTERM inside the process's own sqlite write leaves the store
        # locked to the handler, which says so; the third run then closes the run before continuing it
        second_log = " ".join(sorted(project.glob("kedro_*.log"))[1].read_text().split())
        assert run.info.status == "RUNNING" and f"could not end MLflow run {run.info.run_id} KILLED" in second_log

    third = _start(project)
    assert third.wait(timeout=600) == 0
    logs = [" ".join(log.read_text().split()) for log in sorted(project.glob("kedro_*.log"))]
    assert "ppo: resuming from" not in logs[0]
    assert "ppo: resuming from" in logs[1] and "ppo: resuming from" in logs[2]
    assert all(f"continuing MLflow run {run.info.run_id}" in log for log in logs[1:])

    client, runs = _runs(project)
    assert len(runs) == 1  # no orphan beside it
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags[CONTINUED_TAG] == "2"
    assert run.data.tags[PROCESS_TAG].split(":")[1] == str(third.pid)
    for name in ("objective/kl", "objective/scores", "loss/policy"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, STEPS + 1)), name  # every step once, across three processes
    history = (project / "data" / "08_reporting" / "ppo_history.json").read_text()
    assert history.count('"step"') == STEPS


def test_a_process_tag_tells_a_live_process_from_a_dead_one_and_a_recycled_pid():
    assert process_alive(this_process()) is True
    host, pid, started = this_process().split(":")
    assert process_alive(f"{host}:{pid}:{int(started) + 1}") is False  # same pid, another process
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert process_alive(f"{host}:{dead.pid}:") is False
    assert process_alive(f"elsewhere.example:{os.getpid()}:") is None


SIGNALLED = """
import os, signal, sys, time, mlflow
from alignops.tracking.interruptions import KillRecorder
signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[2] == "nohup" else signal.SIG_DFL)  # as a shell leaves it
mlflow.set_tracking_uri(sys.argv[1])
run = mlflow.start_run()
recorder = KillRecorder()
recorder.install(run.info.run_id)
recorder.install(run.info.run_id)  # a second session in the process: no handler may chain to itself
print(run.info.run_id, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("shell", ["terminal", "nohup"])
def test_sighup_ends_the_run_killed_unless_the_process_ignores_it(shell, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = subprocess.Popen([str(Path(KEDRO).parent / "python"), "-c", SIGNALLED, uri, shell],
                               env=environment_without_mlflow_run(), stdout=subprocess.PIPE, text=True)
    try:
        run_id = process.stdout.readline().strip()
        process.send_signal(signal.SIGHUP)
        if shell == "terminal":
            assert process.wait(timeout=60) == -signal.SIGHUP  # the signal's own outcome, after recording
            assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
        else:
            time.sleep(2)
            assert process.poll() is None  # nohup: the run goes on, still RUNNING
            assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
    finally:
        process.kill()
        process.wait()
