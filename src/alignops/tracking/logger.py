"""Per-step metrics into the MLflow run that kedro-mlflow opened for this ``kedro run``.

Training loops only know a ``log(metrics, step)`` callable; ``metric_logger()`` is
the one that reaches MLflow. Metric names arrive final (a loop names its held-out
metrics ``eval/<stage>/...`` itself), so a name in MLflow is its name in the stage's
history file. It writes to the run by id through ``MlflowClient``
(not the fluent API's thread-local "active run"), so it works the same in Kedro's
SequentialRunner, in ParallelRunner's worker processes and in a later
``accelerate launch`` where only the main process may log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from alignops.tracking.interruptions import CONTINUED_ENV

LogFn = Callable[[dict[str, float], int], None]

RUN_ID_ENV = "MLFLOW_RUN_ID"
"""Set by the tracking hook for the length of a pipeline run, so worker processes
started with ``spawn`` (not only ``fork``) find the run."""

MAX_BATCH = 1000
"""MLflow's limit on metrics per ``log_batch`` call."""


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (``accelerate launch`` sets ``RANK``), or a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


def current_run_id() -> str | None:
    """The run this process should log to: the active one, else the one the hook exported;
    None when there is none, or off rank 0 (only the main process logs)."""
    if not is_main_process():
        return None
    active = mlflow.active_run()
    if active is not None:
        return active.info.run_id
    return os.environ.get(RUN_ID_ENV) or None


class MlflowMetricLogger:
    """A ``log(metrics, step)`` callable that batches rows into ``log_batch`` calls.

    A sqlite-backed store takes ~10 ms a write; a loop logging every few steps would pay
    that each time, so rows are buffered and sent every ``flush_every_s`` seconds (and on
    ``flush``), and the curves still fill in while a stage trains.
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None, flush_every_s: float = 2.0):
        self.run_id = run_id
        self._client = client or MlflowClient()
        self._flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        # a run continued after a kill has the steps its killed process sent: not twice
        self._logged_until: dict[str, int] | None = {} if os.environ.get(CONTINUED_ENV) else None

    def _new(self, name: str, step: int) -> bool:
        if self._logged_until is None:
            return True
        if name not in self._logged_until:
            history = self._client.get_metric_history(self.run_id, name)
            self._logged_until[name] = max((m.step for m in history), default=-1)
        return step > self._logged_until[name]

    def __call__(self, metrics: dict[str, Any], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self._pending.extend(
            Metric(name, float(value), timestamp, int(step)) for name, value in metrics.items() if self._new(name, step)
        )
        if time.monotonic() - self._last_flush >= self._flush_every_s:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), MAX_BATCH):
            self._client.log_batch(self.run_id, metrics=self._pending[start : start + MAX_BATCH])
        self._pending = []
        self._last_flush = time.monotonic()


def metric_logger() -> LogFn | None:
    """The MLflow logger during a tracked run on the main process, else None (a
    ``MetricHistory`` without a sink: the rows stay in the stage's history)."""
    run_id = current_run_id()
    return None if run_id is None else MlflowMetricLogger(run_id)


def require_run() -> str:
    """The current run's id, attached as the active run in this process if it is not yet
    (a spawned worker); never ended here, kedro-mlflow ends it with the pipeline."""
    run_id = current_run_id()
    if run_id is None:
        raise RuntimeError(
            "no MLflow run to log to: this node needs the run kedro-mlflow opens for `kedro run` "
            "(is tracking disabled for this pipeline in conf/*/mlflow.yml?)"
        )
    if mlflow.active_run() is None:
        mlflow.start_run(run_id=run_id)
    return run_id
