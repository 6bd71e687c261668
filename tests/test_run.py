"""The project as a user runs it: `kedro run`, environments, the validation gate, kedro-viz."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alignops.preferences.validation import DataValidationError
from tests.helpers import REPO_ROOT, TRACKED_FIRST_RUN_DATA, run_kedro

STAGES = {"data_generation", "ingestion", "data_validation", "data_report",
          "sft", "reward", "audit_judge", "ppo", "dpo", "evaluation", "report", "registry"}
DATA_STAGES = {"ingestion", "data_validation", "data_report"}
FILES_STAGES = STAGES - {"data_generation"} | {"sources"}


def _write_env(project: Path, env: str, catalog: dict, parameters: dict | None = None) -> None:
    folder = project / "conf" / env
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "catalog.yml").write_text(json.dumps(catalog))  # JSON is valid YAML
    if parameters:
        (folder / "parameters.yml").write_text(json.dumps(parameters))


@pytest.mark.parametrize(("sources", "journey"), [(None, STAGES), ({"kind": "files"}, FILES_STAGES)])
def test_registry_has_every_stage_and_the_journey_for_the_data_source(sources, journey):
    from kedro.framework.project import configure_project, pipelines

    from alignops.pipeline_registry import use_sources

    configure_project("alignops")
    use_sources(sources)
    try:
        names = set(pipelines)
        assert STAGES | FILES_STAGES | {"data", "__default__"} <= names
        nodes = {name: {n.name for n in pipelines[name].nodes} for name in journey | {"data", "__default__"}}
        assert nodes["__default__"] == set().union(*(nodes[stage] for stage in journey))
        assert nodes["data"] == set().union(*(nodes[stage] for stage in DATA_STAGES))
        inputs, datasets = pipelines["__default__"].inputs(), pipelines["__default__"].datasets()
        if sources is None:  # the world makes the preferences and its gold judge
            assert "raw_preferences" not in inputs and "gold_judge_spec" in datasets
        else:  # the user's preferences, and nothing of the world: no gold judge, no world summary
            assert "raw_preferences" in inputs and not {"gold_judge_spec", "world_summary"} & datasets
    finally:
        use_sources(None)


@pytest.mark.slow
def test_kedro_run_cli_runs_the_default_dag_end_to_end(tracked_project):
    # The tracked project's first `kedro run --env test` (the whole default DAG from an empty
    # data/, asserted to exit 0 where it is built) is the run checked here: one run, not two.
    data = tracked_project / TRACKED_FIRST_RUN_DATA
    validated = pd.read_parquet(data / "03_primary" / "preferences.parquet")
    canonical = pd.read_parquet(data / "02_intermediate" / "preferences.parquet")
    assert len(validated) > 0
    assert set(validated["source_format"]) == {"kwise"}
    quarantine = data / "02_intermediate" / "preferences_quarantine.jsonl"
    quarantined = sum(1 for line in quarantine.read_text().splitlines() if line.strip())
    assert len(validated) + quarantined == len(canonical)  # nothing dropped silently
    train = pd.read_parquet(data / "05_model_input" / "preferences_train.parquet")
    heldout = pd.read_parquet(data / "05_model_input" / "preferences_heldout.parquet")
    audit = pd.read_parquet(data / "05_model_input" / "preferences_audit.parquet")
    assert len(train) + len(heldout) + len(audit) == len(validated) and len(heldout) > 0 and len(audit) > 0
    assert not set(train["prompt"]) & set(heldout["prompt"]) and not set(train["prompt"]) & set(audit["prompt"])

    report = json.loads((data / "08_reporting" / "data_report.json").read_text())
    assert report["rows"] == len(validated)
    assert len(report["annotator_agreement"]["annotators"]) >= 2
    assert (data / "08_reporting" / "data_report.png").stat().st_size > 10_000
    assert (data / "08_reporting" / "data_docs" / "index.html").exists()
    assert json.loads((data / "08_reporting" / "validation_report.json").read_text())["success"]
    assert json.loads((data / "08_reporting" / "world_summary.json").read_text())
    # and every stage after the data: each training loop's history, the evaluation of every policy
    for stage in ("sft", "reward", "ppo", "dpo"):
        assert json.loads((data / "08_reporting" / f"{stage}_history.json").read_text()), stage
    evaluated = json.loads((data / "08_reporting" / "evaluation_summary.json").read_text())["policies"]
    assert {"sft", "ppo", "dpo"} <= set(evaluated)
    # the report: PPO from SFT through its snapshot (test env: step 1) to the end, best-of-1 and 2, DPO
    frontier = json.loads((data / "08_reporting" / "frontier.json").read_text())
    assert [(p["policy"], p["step"], p["n"]) for p in frontier["points"]] == [
        ("ppo", 0, None), ("ppo", 1, None), ("ppo", 2, None), ("best_of_n", None, 1), ("best_of_n", None, 2),
        ("dpo", None, None)]
    assert frontier["points"][0]["kl"] == 0 and frontier["points"][0]["win_rate_vs_sft"]["value"] == 0.5
    alarm = json.loads((data / "08_reporting" / "overoptimisation.json").read_text())
    assert alarm["offered_step"] in (0, 1, 2) and alarm["last_step"] == 2
    diagnostics = json.loads((data / "08_reporting" / "policy_diagnostics.json").read_text())
    assert diagnostics["labelled"] and set(diagnostics["policies"]) == set(evaluated)
    page = (data / "08_reporting" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page


@pytest.mark.slow
def test_strict_failure_stops_before_downstream_and_leaves_the_report(project_copy):
    bad = project_copy / "data" / "01_raw" / "user.jsonl"
    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"}
            for i in range(30)]
    rows[7]["chosen"] = "   "  # empty after stripping: line 8
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _write_env(
        project_copy,
        "user",
        {"raw_preferences": {"type": "alignops.catalog.preferences.PreferenceSourceDataset",
                             "filepath": str(bad), "format": "auto", "read_only": True}},
        {"data_validation": {"mode": "strict"}},
    )
    # conf/test (tiny sizes) is the base of this check: copy it under the user env's name
    for f in (project_copy / "conf" / "test").glob("parameters_*.yml"):
        shutil.copy2(f, project_copy / "conf" / "user" / f.name)

    with pytest.raises(DataValidationError, match="strict mode") as excinfo:
        run_kedro(project_copy, env="user", pipeline_names=["data"])
    # the message points at the bad row: its file, its line (the 8th) and why it failed
    problems = [line for line in str(excinfo.value).splitlines() if f"{bad}:" in line]
    assert problems and all(f"{bad}:8 " in line for line in problems), str(excinfo.value)
    assert any("chosen empty after stripping" in line for line in str(excinfo.value).splitlines())
    reporting = project_copy / "data" / "08_reporting"
    report = json.loads((reporting / "validation_report.json").read_text())
    assert report["success"] is False
    assert (reporting / "data_docs" / "index.html").exists()
    assert not (project_copy / "data" / "03_primary" / "preferences.parquet").exists()
    assert not (reporting / "data_report.json").exists()


@pytest.mark.slow
def test_hh_rlhf_environment_quarantines_the_malformed_rows(project_copy):
    catalog = yaml.safe_load((project_copy / "conf" / "hh_rlhf" / "catalog.yml").read_text())
    # the file the environment ships (examples/ is not in the copy): 405 pairs, 6 of them malformed
    catalog["raw_preferences"]["filepath"] = str(REPO_ROOT / catalog["raw_preferences"]["filepath"])
    _write_env(project_copy, "hh_rlhf", catalog)
    run_kedro(project_copy, env="hh_rlhf", pipeline_names=["data"])

    data = project_copy / "data"
    validated = pd.read_parquet(data / "03_primary" / "preferences.parquet")
    quarantine = pd.read_json(data / "02_intermediate" / "preferences_quarantine.jsonl", lines=True)
    assert len(validated) + len(quarantine) == 405
    assert sorted(quarantine["source_line"]) == [87, 401, 402, 403, 404, 405]  # examples/hh_rlhf/README.md
    # well-formed records, every one: the validation gate's to judge, not ingestion's
    assert not (data / "02_intermediate" / "ingestion_quarantine.jsonl").read_text().strip()
    assert (data / "08_reporting" / "data_report.png").exists()


@pytest.mark.slow
def test_kedro_viz_build_shows_every_pipeline(project_copy, monkeypatch):
    # `kedro viz build` through Kedro's own CLI group in this process: the click command a user's
    # `kedro` runs, without a new process importing torch, Great Expectations and MLflow again.
    # tests/test_browser.py starts `kedro viz run` as a real subprocess.
    from click.testing import CliRunner
    from kedro.framework.cli.cli import KedroCLI

    monkeypatch.chdir(project_copy)  # the build goes to ./build
    result = CliRunner().invoke(KedroCLI(project_copy), ["viz", "build"])
    assert result.exit_code == 0, result.output[-3000:] + repr(result.exception)
    api = project_copy / "build" / "api"
    registered = {p["id"] for p in json.loads((api / "main").read_text())["pipelines"]}
    assert STAGES | {"data", "__default__"} <= registered
    for stage in STAGES:
        graph = json.loads((api / "pipelines" / stage).read_text())
        task_nodes = [n for n in graph["nodes"] if n["type"] == "task"]
        assert task_nodes, f"kedro-viz shows no nodes for {stage}"


@pytest.mark.slow
def test_each_in_process_session_is_its_own_finished_run_and_leaves_none_active(project_copy):
    import mlflow

    for _ in range(2):
        run_kedro(project_copy, env="test", pipeline_names=["data_generation"])
        assert mlflow.active_run() is None
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("alignops").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert len({r.info.run_id for r in runs}) == 2
