"""One MLflow parent run per DVC reproduction, with a nested run per stage.

``dvc repro`` runs a ``kedro run`` per stage. Each stage keeps a run of its own (its
parameters, per-step metrics, artifacts, status and duration, as a ``kedro run`` of that
pipeline would), nested under one parent run per reproduction, so the runs list shows
one row per ``dvc repro`` or ``dvc exp run`` that expands into its stages. The parent
holds what comparing two reproductions needs:

- every parameter of the whole journey, as a ``kedro run`` of ``__default__`` logs them.
  A stage DVC skipped was made with the parameters of this commit (DVC reruns it
  otherwise), so the parent's parameters describe every output of the reproduction;
- the final value of every metric of the stages that ran (``eval/...`` once evaluation
  has run, ``ppo/...`` and so on): the per-step histories stay in the stage runs;
- tags: ``dvc.repro`` (which DVC process), ``dvc.stages`` (the stages that ran, in
  order), the experiment name, the git commit.

Stage runs are found from the parent (``tags.mlflow.parentRunId``) in MLflow's UI and API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from alignops.tracking.lineage import REPRO_TAG, DvcRun
from alignops.tracking.run_info import REDACTED, is_secret, run_name

STAGES_TAG = "dvc.stages"
PARAM_BATCH, METRIC_BATCH = 100, 1000  # MLflow's limits in one log_batch call


def parent_run_name(dvc: DvcRun, env: str, git: Mapping[str, str]) -> str:
    """``dvc repro local 64b122e`` or ``dvc exp bald-cusp local 64b122e``, named as a stage's
    run is (``run_info.run_name``: ``-dirty`` when so, no commit outside git)."""
    return run_name([f"dvc exp {dvc.exp_name}" if dvc.exp_name else "dvc repro"], env, dict(git))


def open_parent(
    client: MlflowClient,
    experiment_id: str,
    dvc: DvcRun,
    tags: Mapping[str, str],
    run_name: str,
    params: Callable[[], Mapping[str, Any]],
) -> str:
    """The parent run of ``dvc``'s reproduction, created with ``params()`` by its first stage
    (later stages do not build them); the stage is appended to its ``dvc.stages`` tag."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{REPRO_TAG}` = '{dvc.repro}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        stages = found[0].data.tags.get(STAGES_TAG, "")
    else:
        run = client.create_run(experiment_id, run_name=run_name, tags={**tags, REPRO_TAG: str(dvc.repro)})
        run_id, stages = run.info.run_id, ""
        log_params(client, run_id, params())
    client.set_tag(run_id, STAGES_TAG, ",".join(filter(None, [stages, dvc.stage])))
    return run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """``params`` (flattened names) in batches; secrets redacted, values cut to MLflow's limit."""
    entries = [
        Param(name, REDACTED if is_secret(name) else str(value)[:MAX_PARAM_VAL_LENGTH])
        for name, value in params.items()
    ]
    for start in range(0, len(entries), PARAM_BATCH):
        client.log_batch(run_id, params=entries[start : start + PARAM_BATCH])


def copy_final_metrics(client: MlflowClient, child_id: str, parent_id: str) -> None:
    """The latest value of each of the stage run's metrics, onto the parent."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in client.get_run(child_id).data.metrics.items()]
    for start in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(parent_id, metrics=metrics[start : start + METRIC_BATCH])
