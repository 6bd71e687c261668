"""``alignops-report``: a sweep's runs (say over ``ppo.kl_coef``) on one HTML page, their
reward–KL frontiers overlaid.

``make sweep`` queues one ``dvc exp run`` per value, runs them all, then calls this command;
each experiment's report stage logged ``reports/frontier.json`` and ``overoptimisation.json``
into its MLflow run. Without ``--last`` or ``--runs`` the page shows the newest sweep: the runs
of the newest run's git commit whose PPO settings differ from its own only in ``kl_coef``, the
newest run for each value.

A root module, not ``tracking/``: it reads MLflow (which ``evaluation/`` must not) and renders
with ``evaluation/`` (which ``tracking/`` may not import).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from alignops.evaluation.html_report import render_sweep
from alignops.tracking.frontiers import FRONTIER_ARTIFACT, run_frontiers, tracking_store
from alignops.tracking.run_info import find_project_root

OVEROPTIMISATION_ARTIFACT = "reports/overoptimisation.json"
COMMIT_TAG = "git.commit"
EXP_NAME_TAG = "dvc.exp_name"
SWEPT = "kl_coef"
"""The setting a sweep varies; every other PPO setting must be equal for runs to be one sweep."""
DEFAULT_OUTPUT = Path("data/08_reporting/sweep_report.html")
"""Beside the report stage's own ``report.html``, under the project root."""


def ppo_settings(frontier: dict, info: dict) -> dict:
    """The PPO settings that drew ``frontier``: its own ``ppo`` block, else the run's parameters
    (as kedro-mlflow flattened them, ``ppo.`` dropped) for runs from before the block existed."""
    if frontier.get("ppo"):
        return dict(frontier["ppo"])
    return {name.removeprefix("ppo."): value for name, value in info["params"].items()}


def sweep_runs(client: MlflowClient, last: int | None = None, run_ids: list[str] | None = None,
               experiment_name: str | None = None) -> list[tuple[str, dict, dict]]:
    """(label, frontier, info) of the runs to show, by ``kl_coef`` (runs without one last): the
    ``run_ids``, else the newest ``last`` runs with a frontier, else the newest sweep (see the
    module docstring). ``info`` is ``run_frontiers``' with ``kl_coef``, ``steps`` and the run's
    ``overoptimisation.json`` (None where it logged none) added, as ``render_sweep`` reads it,
    and its ``exp_name`` and ``commit`` tags.
    ``LookupError`` when no run has a frontier."""
    if run_ids is not None:
        found = run_frontiers(client, run_ids=run_ids, max_runs=len(run_ids))
        missing = set(run_ids) - {info["run_id"] for _, _, info in found}
        if missing:
            raise LookupError(f"no {FRONTIER_ARTIFACT} in run(s) {', '.join(sorted(missing))}")
    elif last is not None:
        found = run_frontiers(client, experiment_name, max_runs=last)
    else:
        found = _newest_sweep(client, experiment_name)
    if not found:
        raise LookupError(f"no run in {client.tracking_uri} logged {FRONTIER_ARTIFACT}")
    runs = []
    for _, frontier, info in found:
        settings = ppo_settings(frontier, info)
        run = client.get_run(info["run_id"])
        runs.append((frontier, {**info, "kl_coef": settings.get(SWEPT), "steps": settings.get("steps"),
                                "exp_name": run.data.tags.get(EXP_NAME_TAG), "commit": run.data.tags.get(COMMIT_TAG),
                                "overoptimisation": _load_json(client, info["run_id"], OVEROPTIMISATION_ARTIFACT)}))
    runs.sort(key=lambda run: (run[1]["kl_coef"] is None, float(run[1]["kl_coef"] or 0)))
    return [(label, frontier, info) for label, (frontier, info) in zip(_labels(runs), runs, strict=True)]


def _newest_sweep(client: MlflowClient, experiment_name: str | None) -> list[tuple[str, dict, dict]]:
    newest = run_frontiers(client, experiment_name, max_runs=1)
    if not newest:
        return []
    _, frontier, info = newest[0]
    run = client.get_run(info["run_id"])
    commit = run.data.tags.get(COMMIT_TAG)
    if commit is None:
        print(f"alignops-report: the newest run {info['run_id']} has no {COMMIT_TAG} tag, so no sweep to find; "
              "pass --last N or --runs to show more runs", file=sys.stderr)
        return newest
    same_commit = []
    page_token = None
    while True:  # every run of the commit: a sweep's report runs sit among its other stages' runs
        page = client.search_runs([run.info.experiment_id], f"tags.`{COMMIT_TAG}` = '{commit}'",
                                  max_results=1000, page_token=page_token)
        same_commit += [r.info.run_id for r in page]
        page_token = page.token
        if not page_token:
            break
    fixed = _without_swept(ppo_settings(frontier, info))
    sweep, seen = [], set()
    for candidate in run_frontiers(client, run_ids=same_commit, max_runs=len(same_commit)):  # newest first
        settings = ppo_settings(candidate[1], candidate[2])
        if _without_swept(settings) == fixed and str(settings.get(SWEPT)) not in seen:
            seen.add(str(settings.get(SWEPT)))
            sweep.append(candidate)
    return sweep


def _without_swept(settings: dict) -> dict:
    return {name: value for name, value in settings.items() if name != SWEPT}


def _labels(runs: list[tuple[dict, dict]]) -> list[str]:
    """``kl_coef=0.05 · <experiment or run name>``; the short run id where two would be equal."""
    def label(info: dict, with_id: bool) -> str:
        name = info["exp_name"] or info["run_name"] or info["run_id"][:8]
        if with_id and name != info["run_id"][:8]:
            name += f" {info['run_id'][:8]}"
        return f"{SWEPT}={info['kl_coef']} · {name}" if info["kl_coef"] is not None else name

    counts = Counter(label(info, with_id=False) for _, info in runs)
    return [label(info, with_id=counts[label(info, with_id=False)] > 1) for _, info in runs]


def _load_json(client: MlflowClient, run_id: str, artifact: str) -> dict | None:
    folder, name = artifact.rsplit("/", 1)
    if not any(entry.path == artifact for entry in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory(prefix="alignops-report-") as scratch:
        return json.loads(Path(client.download_artifacts(run_id, artifact, scratch)).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, metavar="N", help="the newest N runs that logged a frontier "
                       "(default: the newest sweep: the newest run's commit, PPO settings equal but kl_coef)")
    which.add_argument("--runs", nargs="+", metavar="ID", help="these MLflow runs")
    parser.add_argument("--experiment", help="only runs of this MLflow experiment (default: every experiment)")
    parser.add_argument("--output", type=Path, help=f"the page (default: {DEFAULT_OUTPUT} in the project)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else the project's mlflow.yml")
    args = parser.parse_args(argv)
    if args.last is not None and args.last < 1:
        parser.error("--last needs a positive number of runs")
    try:
        tracking = args.tracking_uri or tracking_store(Path.cwd())
        runs = sweep_runs(MlflowClient(tracking_uri=tracking), args.last, args.runs, args.experiment)
    except (LookupError, FileNotFoundError, MlflowException) as error:  # MlflowException: no such run id
        parser.error(str(error))
    output = args.output or (find_project_root(Path.cwd()) or Path.cwd()) / DEFAULT_OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    commits = {info["commit"] for _, _, info in runs}
    commit = f", git commit {next(iter(commits))[:7]}" if len(commits) == 1 and None not in commits else ""
    output.write_text(render_sweep(runs, source=f"the MLflow store {tracking}{commit}"))
    print(f"alignops-report: {len(runs)} runs -> {output}")
    for label, _, info in runs:
        print(f"  {label}  ({info['run_id']})")


if __name__ == "__main__":
    main()
