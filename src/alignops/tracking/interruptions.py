"""MLflow runs across kills: a killed ``kedro run`` is recorded KILLED, and the same command
run again continues it instead of leaving an orphan beside a new run.

- Each run is tagged with the process that opened it (``PROCESS_TAG``: host, pid and the
  pid's start time, so a recycled pid is not taken for the same process).
- SIGTERM or SIGHUP to ``kedro run``, or Ctrl-C, ends its run KILLED before the process goes
  (``KillRecorder``); MLflow's own exit handler would have ended it FINISHED. A SIGKILL
  leaves the run RUNNING with no process behind it: the next ``kedro run`` in the project
  finds it (``close_abandoned``) and ends it KILLED.
- A run is continued when it is the newest run of the same ``kedro_command`` (pipelines,
  environment, runtime ``--params``), on the same git commit, with the same parameter
  values, and was KILLED (``run_to_continue``). Its training stages resume from their
  checkpoints (``alignops.training.checkpoints``) and their per-step metrics carry on at the
  steps after them: rows the killed process had already sent are not sent twice
  (``tracking.logger``). The run ends FINISHED once, when the pipeline does.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

PROCESS_TAG = "alignops.process"
"""``host:pid:start`` of the ``kedro run`` process that holds the run now."""
CONTINUED_TAG = "alignops.continued"
"""How many times the run was continued after a kill."""
CONTINUED_ENV = "ALIGNOPS_CONTINUED_RUN"
"""Exported while a continued run is open: the metric logger skips rows the run already has."""
SEARCH_DEPTH = 200
"""Newest runs of the experiment looked through for an abandoned or continuable one."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def process_alive(tag: str) -> bool | None:
    """Whether the process a ``PROCESS_TAG`` names is still running; None when it ran on
    another host (nothing can be known of it from here)."""
    host, _, rest = tag.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    return not started or _start_time(int(pid)) in (started, None)


def close_abandoned(client: MlflowClient, experiment_id: str) -> list[str]:
    """End KILLED every RUNNING run of this host whose process is gone (a SIGKILL, a power
    cut, an out-of-memory kill); their ids."""
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=SEARCH_DEPTH):
        tag = run.data.tags.get(PROCESS_TAG)
        if tag and process_alive(tag) is False:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            closed.append(run.info.run_id)
    return closed


def run_to_continue(
    client: MlflowClient, experiment_id: str, command: str, project: str, git: Mapping[str, str],
    params: Mapping[str, str],
) -> str | None:
    """The id of the KILLED run this ``kedro run`` continues, or None for a new run: the newest
    run of ``command`` in this ``project`` folder on this host, if it was killed, on the same
    commit (``git``), and every parameter it logged has the value it has now (MLflow refuses to
    change one). Another machine's or another checkout's run sharing the store is never taken."""
    for run in client.search_runs([experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=SEARCH_DEPTH):
        tags = run.data.tags
        if tags.get("kedro_command") != command or tags.get("mlflow.parentRunId"):
            continue
        if tags.get("project_path") != project or tags.get(PROCESS_TAG, "").split(":")[0] != socket.gethostname():
            continue
        if run.info.status != RunStatus.to_string(RunStatus.KILLED):
            return None  # the newest run of this command ended otherwise: nothing to continue
        if any(tags.get(key) != value for key, value in git.items()):
            return None
        logged = run.data.params
        if any(name in logged and logged[name] != str(value) for name, value in params.items()):
            return None
        return run.info.run_id
    return None


class KillRecorder:
    """While installed, SIGTERM and SIGHUP end the run KILLED, then do what they did before
    (the default: the process ends at once, and its ParallelRunner workers with it); at exit
    (Ctrl-C, or an interrupted launch), a run still open is ended KILLED before MLflow's own
    exit handler would end it FINISHED. Only in the process that installed it: a forked
    ParallelRunner worker inherits the handlers but does not own the run."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.run_id: str | None = None
        self._owner = 0
        self._previous: dict[int, Any] = {}

    def install(self, run_id: str) -> None:
        """Handle the signals for ``run_id``. A run an earlier session of this process left open
        (a Ctrl-C'd in-process ``session.run``: Kedro calls no hook for a KeyboardInterrupt) is
        ended KILLED first, and the handlers it installed are put back, never chained to."""
        if self.run_id != run_id:
            self.end_killed()
        self.uninstall()
        self.run_id, self._owner = run_id, os.getpid()
        try:
            # an ignored signal (SIGHUP under nohup) stays ignored: the run goes on, and so does its status
            ignored = {sig for sig in self.SIGNALS if signal.getsignal(sig) == signal.SIG_IGN}
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS if sig not in ignored}
        except ValueError:  # not the main thread (a notebook's worker thread): exit handling only
            self._previous = {}

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous, self.run_id = {}, None

    def end_killed(self) -> None:
        """End the run KILLED if it is still open in this process (at exit, on a signal)."""
        if self.run_id is None or os.getpid() != self._owner:
            return
        import mlflow

        run_id, self.run_id = self.run_id, None
        killed = RunStatus.to_string(RunStatus.KILLED)
        try:
            while (active := mlflow.active_run()) is not None and active.info.run_id == run_id:
                mlflow.end_run(killed)
            client = MlflowClient()
            if client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
                client.set_terminated(run_id, killed)
        except Exception as error:  # noqa: BLE001 - a locked or unreachable store: the next run closes it (close_abandoned)
            # e.g. a signal that arrived inside this process's own sqlite write: the store stays locked
            # until the process is gone, so the run stays RUNNING until the next run in the project
            print(f"alignops: could not end MLflow run {run_id} KILLED ({type(error).__name__}: {error}); "
                  "the next kedro run in this project closes it", file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() == self._owner:
            self.end_killed()  # never raises: the signal goes on to do what it did before
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous) and previous != self._on_signal:
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
