"""The reward–KL frontiers that runs logged, read back from MLflow to compare runs
(``notebooks/compare_runs.ipynb``).

Each ``kedro run`` with the report stage logs ``reports/frontier.json`` into its run: the
deciding judge's and the proxy's (the training reward model's) scores against √KL to the
SFT policy, at every PPO checkpoint, for best-of-N at each N and for DPO. The run's
parameters and the over-optimisation alarm's tags say which setting made which curve.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from alignops.tracking.evaluation import ALARM_TAG, PEAK_STEP_TAG
from alignops.tracking.promote import store_uris
from alignops.tracking.store import sqlite_file

FRONTIER_ARTIFACT = "reports/frontier.json"
PARAMS = ("ppo.kl_coef", "ppo.steps", "ppo.kl_controller", "ppo.kl_target", "ppo.learning_rate")
"""The parameters (as kedro-mlflow flattens them) that move a run along its frontier, or move
the frontier itself: the KL penalty above all."""
SEARCH_PAGE = 100
"""Runs fetched per search request while looking for those with a frontier."""


def tracking_store(start: Path) -> str:
    """The tracking URI to read: ``MLFLOW_TRACKING_URI`` if set, else the store ``kedro run``
    tracks into, found from ``start`` (any folder of the project) upwards, as
    ``alignops-promote`` finds it. ``FileNotFoundError`` for a sqlite store not made yet (MLflow
    would quietly create an empty one and find no runs)."""
    tracking, _ = store_uris(None, None, start)
    database = sqlite_file(tracking)
    if database is not None and not database.is_file():
        raise FileNotFoundError(f"no MLflow store at {database}: has a run been tracked in this project yet?")
    return tracking


def run_frontiers(
    client: MlflowClient, experiment_name: str | None = None, run_ids: list[str] | None = None, max_runs: int = 20
) -> list[tuple[str, dict, dict]]:
    """(label, frontier, run info) of up to ``max_runs`` runs that logged ``reports/frontier.json``,
    newest first: ``run_ids`` if given, else the runs of ``experiment_name``, else of every
    experiment. Runs without the artifact (other pipelines, runs from before the report stage,
    a run that failed before it) are skipped.

    The label, e.g. ``kl_coef=0.05 · __default__ local 943f197``, gains the short run id where
    two runs would otherwise share one (runs of one commit share their name). The run info holds
    ``run_id``, ``run_name``, ``start_time`` (UTC), ``params`` (those of ``PARAMS`` the run logged,
    as logged), ``alarm`` and ``peak_step`` (None where the run has no such tag).
    """
    found = []
    for run in _newest_first(client, experiment_name, run_ids):
        if len(found) >= max_runs:
            break
        if _has_frontier(client, run.info.run_id):
            found.append((_load_frontier(client, run.info.run_id), run_info(run)))
    labels = _labels([info for _, info in found])
    return [(label, frontier, info) for label, (frontier, info) in zip(labels, found, strict=True)]


def run_info(run: Run) -> dict:
    """What the comparison shows of a run besides its frontier."""
    peak_step = run.data.tags.get(PEAK_STEP_TAG)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "start_time": datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC),
        "params": {name: run.data.params[name] for name in PARAMS if name in run.data.params},
        "alarm": run.data.tags.get(ALARM_TAG),
        "peak_step": int(peak_step) if peak_step not in (None, "") else None,
    }


def frontier_table(frontiers: list[tuple[str, dict, dict]]) -> pd.DataFrame:
    """One row per run of ``run_frontiers``: its settings, the alarm, and where PPO ended (its
    last checkpoint's judge score with the interval, and its KL to SFT)."""
    rows = []
    for label, frontier, info in frontiers:
        ppo = [p for p in frontier["points"] if p["policy"] == "ppo"]
        last = max(ppo, key=lambda p: p["step"]) if ppo else None
        rows.append(
            {
                "run": label,
                "kl_coef": info["params"].get("ppo.kl_coef"),
                "steps": info["params"].get("ppo.steps"),
                "alarm": info["alarm"],
                "peak step": info["peak_step"],
                "judge": frontier["judge"],
                "PPO final judge": format_interval(last["judge"]) if last else None,
                "PPO final KL": last["kl"] if last else math.nan,
                "started": info["start_time"].strftime("%Y-%m-%d %H:%M"),
                "run_id": info["run_id"],
            }
        )
    return pd.DataFrame(rows)


def format_interval(interval: dict) -> str:
    """``0.412 [0.380, 0.445]``, as ``Interval`` prints itself in the evaluation."""
    return f"{interval['value']:.3f} [{interval['ci_low']:.3f}, {interval['ci_high']:.3f}]"


def _newest_first(client: MlflowClient, experiment_name: str | None, run_ids: list[str] | None) -> Iterator[Run]:
    if run_ids is not None:
        yield from sorted((client.get_run(run_id) for run_id in run_ids), key=lambda r: -r.info.start_time)
        return
    if experiment_name is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise LookupError(f"no MLflow experiment named {experiment_name!r} in {client.tracking_uri}")
        experiment_ids = [experiment.experiment_id]
    page_token = None
    while True:
        page = client.search_runs(
            experiment_ids, order_by=["attributes.start_time DESC"], max_results=SEARCH_PAGE, page_token=page_token
        )
        yield from page
        page_token = page.token
        if not page_token:
            return


def _has_frontier(client: MlflowClient, run_id: str) -> bool:
    folder = FRONTIER_ARTIFACT.rsplit("/", 1)[0]
    return any(artifact.path == FRONTIER_ARTIFACT for artifact in client.list_artifacts(run_id, folder))


def _load_frontier(client: MlflowClient, run_id: str) -> dict:
    # through the client, so a store whose artifacts sit behind its tracking server is read alike
    with tempfile.TemporaryDirectory(prefix="alignops-frontier-") as folder:
        return json.loads(Path(client.download_artifacts(run_id, FRONTIER_ARTIFACT, folder)).read_text())


def _labels(infos: list[dict]) -> list[str]:
    def label(info: dict, with_id: bool) -> str:
        name = info["run_name"] or info["run_id"][:8]
        if with_id and info["run_name"]:
            name += f" {info['run_id'][:8]}"
        kl_coef = info["params"].get("ppo.kl_coef")
        return f"kl_coef={kl_coef} · {name}" if kl_coef is not None else name

    counts = Counter(label(info, with_id=False) for info in infos)
    return [label(info, with_id=counts[label(info, with_id=False)] > 1) for info in infos]
