"""Per-step metrics reach the run by id, batched; nothing is logged without a run or off rank 0."""

from __future__ import annotations

import mlflow
import pytest

from alignops.tracking.logger import MlflowMetricLogger, metric_logger
from alignops.training.common import MetricHistory


def test_rows_are_buffered_then_logged_with_their_steps_and_names(client):
    run = client.create_run(client.get_experiment_by_name("alignops-test").experiment_id)
    log = MlflowMetricLogger(run.info.run_id, client=client, flush_every_s=3600)
    for step in range(1, 6):
        log({"loss/sft": 1.0 / step, "eval/sft/loss": 2.0 / step}, step)
    assert client.get_metric_history(run.info.run_id, "loss/sft") == []  # still buffered
    log.flush()
    history = client.get_metric_history(run.info.run_id, "loss/sft")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4, 5]
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/sft/loss")}[4] == 0.5
    assert set(client.get_run(run.info.run_id).data.metrics) == {"loss/sft", "eval/sft/loss"}  # names as logged


def test_history_context_flushes_the_sink_even_when_the_loop_fails(client):
    run = client.create_run(client.get_experiment_by_name("alignops-test").experiment_id)
    sink = MlflowMetricLogger(run.info.run_id, client=client, flush_every_s=3600)
    with pytest.raises(RuntimeError), MetricHistory(sink=sink) as history:
        history({"objective/kl": 0.25}, 7)
        raise RuntimeError("interrupted")
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "objective/kl")] == [(7, 0.25)]


def test_no_run_or_another_rank_logs_nothing(tracking_uri, monkeypatch):
    assert not isinstance(metric_logger(), MlflowMetricLogger)
    with mlflow.start_run():
        assert isinstance(metric_logger(), MlflowMetricLogger)
        monkeypatch.setenv("RANK", "1")
        assert not isinstance(metric_logger(), MlflowMetricLogger)
