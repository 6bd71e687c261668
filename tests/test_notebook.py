"""``notebooks/compare_runs.ipynb`` runs, in a real kernel, on a real MLflow store whose runs
logged frontiers as the report stage logs them; ``run_frontiers`` finds those runs, newest first."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from alignops.tracking.frontiers import FRONTIER_ARTIFACT, frontier_table, run_frontiers, tracking_store
from tests.helpers import REPO_ROOT, copy_empty_mlflow_store, make_project_copy

NOTEBOOK = REPO_ROOT / "notebooks" / "compare_runs.ipynb"
T0_MS = 1_796_620_000_000
"""A run's start time (ms since the epoch); each run below starts a minute after the one before."""


def interval(value: float, half_width: float = 0.03) -> dict:
    return {"value": value, "ci_low": value - half_width, "ci_high": value + half_width}


def frontier(kl_per_step: float, beta: float) -> dict:
    """A frontier.json (spec: issue 14) with Gao et al.'s (2022) shapes in d = √KL: the judge
    goes as d(α − β log d) along PPO and d(α − β d) along best-of-N, the proxy rises linearly.
    A large ``beta`` peaks the judge within the run; a small one leaves it rising throughout."""

    def point(policy: str, kl: float, judge: float, step: int | None = None, n: int | None = None) -> dict:
        d = math.sqrt(kl)
        return {"policy": policy, "step": step, "n": n, "label": f"{policy} {step if n is None else n}",
                "kl": kl, "kl_kind": "bound" if n is not None else "estimate", "sqrt_kl": d,
                "judge": interval(0.3 + judge), "proxy": interval(0.1 + 0.5 * d),
                "win_rate_vs_sft": interval(judge / 2), "mean_length": 40.0}

    ppo = []
    for step in range(0, 50, 10):
        d = math.sqrt(kl_per_step * step)
        ppo.append(point("ppo", d**2, d * (0.5 - beta * math.log(d)) if d else 0.0, step=step))
    best_of_n = []
    for n in (1, 2, 4, 8, 16):
        kl = math.log(n) - (n - 1) / n  # the analytic bound
        best_of_n.append(point("best_of_n", kl, math.sqrt(kl) * (0.5 - 0.2 * math.sqrt(kl)), n=n))
    return {"judge": "gold", "judge_description": "the embedded world's noise-free judge", "proxy": "rm",
            "interval": {"level": 0.95, "method": "paired percentile bootstrap over prompts", "resamples": 2000},
            "n_prompts": 24, "points": ppo + best_of_n + [point("dpo", 0.4, 0.25)]}


PEAKED = frontier(kl_per_step=0.15, beta=0.42)  # judge peaks at step 10 (√KL ≈ 1.2), then falls
MONOTONE = frontier(kl_per_step=0.02, beta=0.1)  # a stiffer KL penalty: the judge still rising at step 40


def log_run(client: MlflowClient, experiment_id: str, name: str, minute: int, frontier: dict | None = None,
            kl_coef: str = "0.05", alarm: str | None = None, peak_step: int | None = None) -> str:
    """A finished run as ``kedro run`` leaves it: flattened PPO parameters, the alarm's tags, the
    frontier as ``reports/frontier.json`` (none: a run without the report stage)."""
    run = client.create_run(experiment_id, start_time=T0_MS + 60_000 * minute, run_name=name)
    run_id = run.info.run_id
    for key, value in {"ppo.kl_coef": kl_coef, "ppo.steps": "40", "ppo.kl_controller": "fixed"}.items():
        client.log_param(run_id, key, value)
    if alarm is not None:
        client.set_tag(run_id, "overoptimisation.alarm", alarm)
        client.set_tag(run_id, "overoptimisation.peak_step", str(peak_step))
    client.log_dict(run_id, {"n_prompts": 24}, "reports/evaluation_summary.json")
    if frontier is not None:
        client.log_dict(run_id, frontier, FRONTIER_ARTIFACT)
    client.set_terminated(run_id)
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> tuple[MlflowClient, str]:
    """A real sqlite store (the project's experiment name, artifacts under ``tmp_path``) and its URI."""
    uri = f"sqlite:///{copy_empty_mlflow_store(tmp_path / 'mlflow.db')}"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("alignops", artifact_location=(tmp_path / "mlruns").as_uri())
    return client, uri


@pytest.fixture
def three_runs(store) -> dict[str, str]:
    """A peaked run, a monotone one, and a newer data-only run without a frontier: name -> run id."""
    client, _ = store
    experiment_id = client.get_experiment_by_name("alignops").experiment_id
    return {
        "peaked": log_run(client, experiment_id, "kl sweep a1b2c3d", 0, PEAKED, "0.01", "fired", 10),
        "monotone": log_run(client, experiment_id, "kl sweep e4f5a6b", 1, MONOTONE, "0.2", "quiet", 40),
        "data only": log_run(client, experiment_id, "data local e4f5a6b", 2),
    }


def test_run_frontiers_skips_runs_without_a_frontier_newest_first(store, three_runs):
    client, _ = store
    frontiers = run_frontiers(client)
    assert [info["run_id"] for _, _, info in frontiers] == [three_runs["monotone"], three_runs["peaked"]]
    assert [label for label, _, _ in frontiers] == ["kl_coef=0.2 · kl sweep e4f5a6b", "kl_coef=0.01 · kl sweep a1b2c3d"]
    assert [frontier for _, frontier, _ in frontiers] == [MONOTONE, PEAKED]
    newest = frontiers[0][2]
    assert newest["params"] == {"ppo.kl_coef": "0.2", "ppo.steps": "40", "ppo.kl_controller": "fixed"}
    assert (newest["alarm"], newest["peak_step"]) == ("quiet", 40)
    assert newest["start_time"] > frontiers[1][2]["start_time"]

    assert [info["run_id"] for _, _, info in run_frontiers(client, "alignops", max_runs=1)] == [three_runs["monotone"]]
    chosen = run_frontiers(client, run_ids=[three_runs["peaked"], three_runs["data only"], three_runs["monotone"]])
    assert [info["run_id"] for _, _, info in chosen] == [three_runs["monotone"], three_runs["peaked"]]
    with pytest.raises(LookupError, match="no MLflow experiment named 'elsewhere'"):
        run_frontiers(client, "elsewhere")


def test_runs_of_one_name_get_their_short_ids_in_the_label(store):
    client, _ = store
    experiment_id = client.get_experiment_by_name("alignops").experiment_id
    # two runs of one commit and settings share kedro's run name; a run without the parameter has no prefix
    first = log_run(client, experiment_id, "__default__ local 943f197", 0, PEAKED)
    second = log_run(client, experiment_id, "__default__ local 943f197", 1, PEAKED)
    bare = client.create_run(experiment_id, start_time=T0_MS + 120_000, run_name="bare").info.run_id
    client.log_dict(bare, MONOTONE, FRONTIER_ARTIFACT)
    labels = [label for label, _, _ in run_frontiers(client)]
    assert labels == ["bare", f"kl_coef=0.05 · __default__ local 943f197 {second[:8]}",
                      f"kl_coef=0.05 · __default__ local 943f197 {first[:8]}"]


def test_the_table_shows_where_each_run_ended(store, three_runs):
    client, _ = store
    table = frontier_table(run_frontiers(client))
    assert list(table["run"]) == ["kl_coef=0.2 · kl sweep e4f5a6b", "kl_coef=0.01 · kl sweep a1b2c3d"]
    assert list(table["alarm"]) == ["quiet", "fired"]
    assert list(table["peak step"]) == [40, 10]
    last = PEAKED["points"][4]  # PPO's step 40
    assert table.loc[1, "PPO final judge"] == (
        f"{last['judge']['value']:.3f} [{last['judge']['ci_low']:.3f}, {last['judge']['ci_high']:.3f}]"
    )
    assert table.loc[1, "PPO final KL"] == pytest.approx(0.15 * 40)


def test_the_store_is_the_projects_unless_the_environment_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    project = make_project_copy(tmp_path / "project")
    notebooks = project / "notebooks"
    notebooks.mkdir()
    assert tracking_store(notebooks) == f"sqlite:///{(project / 'mlflow.db').resolve()}"
    (project / "mlflow.db").unlink()
    with pytest.raises(FileNotFoundError, match="has a run been tracked"):
        tracking_store(notebooks)  # not an empty store made on the spot
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_store(notebooks) == "http://127.0.0.1:5000"


def test_the_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_the_notebook_runs_and_shows_every_run(store, three_runs, monkeypatch):
    _, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the kernel inherits this process's environment
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel then draws inline, as PNG outputs
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # this interpreter's ipykernel, whatever kernelspecs the machine has registered
    kernel = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(notebook, km=kernel, timeout=180, startup_timeout=120,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # the kernel's folder
    try:
        client.execute()
    finally:
        if kernel.has_kernel:  # nbclient leaves a kernel it did not start to its owner
            kernel.shutdown_kernel()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "\n".join(str(output.get("data", {}).get("text/html", "")) for output in outputs)
    for label in ("kl_coef=0.2 · kl sweep e4f5a6b", "kl_coef=0.01 · kl sweep a1b2c3d"):
        assert label in text
    assert "data local" not in text  # the run without a frontier is not listed
    assert "fired" in text and "quiet" in text
    assert any("image/png" in output.get("data", {}) for output in outputs)
