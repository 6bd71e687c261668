"""DVC: dvc.yaml is the Kedro DAG, and `dvc repro` / `dvc exp run` rerun what changed, tracked in MLflow.

Real git and real DVC in temporary repositories (no mocks): each holds a copy of the project
(code, configuration, a dvc.yaml made by ``alignops-dvc`` for the tiny ``test`` environment)
and runs ``dvc`` as a user types it. Which stages ran is read from DVC's own output.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    HH_SAMPLE,
    REPO_ROOT,
    USER_ENV,
    copy_empty_mlflow_store,
    environment_without_mlflow_run,
    make_user_env,
)

BIN = Path(sys.executable).parent
WORLD_STAGES = ["data_generation", "ingestion", "data_validation", "data_report", "sft", "reward",
                "audit_judge", "ppo", "dpo", "evaluation", "report", "registry"]
AFTER_PPO = ["ppo", "evaluation", "report", "registry"]


def _env() -> dict[str, str]:
    return {
        **environment_without_mlflow_run(),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `kedro` in the stages' commands
        "KEDRO_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
        "ALIGNOPS_WARM_IDLE": "20",  # each test's repository has a warm server of its own: free it soon
    }


def run(repo: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """A command in ``repo`` (``dvc``, ``git``, ``alignops-dvc``); fails the test, with its output, if it fails."""
    program = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
    result = subprocess.run([program, *args[1:]], cwd=repo, env=_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def ran(result: subprocess.CompletedProcess) -> list[str]:
    """The stages a ``dvc repro`` / ``dvc exp run`` ran, in order (not those it restored from its run cache)."""
    return re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)


def make_repo(path: Path, env: str, remote: Path) -> Path:
    """A git + DVC repository holding the project, its dvc.yaml made for ``env``, committed."""
    path.mkdir(parents=True)
    for item in ("conf", "src"):
        shutil.copytree(REPO_ROOT / item, path / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for item in ("pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy2(REPO_ROOT / item, path / item)
    (path / "conf" / "local").mkdir(exist_ok=True)
    copy_empty_mlflow_store(path / "mlflow.db")
    run(path, "git", "init", "-q")
    run(path, "git", "config", "user.name", "alignops tests")
    run(path, "git", "config", "user.email", "tests@alignops.invalid")
    run(path, "dvc", "init", "-q")
    run(path, "dvc", "config", "core.analytics", "false")
    run(path, "dvc", "remote", "add", "-d", "local", str(remote))
    return path


def commit(repo: Path, message: str) -> str:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)
    return run(repo, "git", "rev-parse", "HEAD").stdout.strip()


def lock_digests(repo: Path) -> dict[str, str]:
    """path -> md5 of every stage output in the repository's dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def set_ppo_kl(repo: Path, value: float) -> None:
    path = repo / "conf" / "base" / "parameters_ppo.yml"
    text, count = re.subn(r"(?m)^(  kl_coef:) .*$", rf"\g<1> {value}", path.read_text())
    assert count == 1
    path.write_text(text)


def mlflow_client(repo: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# -- dvc.yaml is the Kedro DAG -------------------------------------------------------------------------


def _stage_edges(stages: dict) -> set[tuple[str, str]]:
    """(upstream, downstream) for every dep of a stage that another stage outputs."""
    producer = {path: name for name, stage in stages.items()
                for kind in ("outs", "metrics", "plots") for path in stage.get(kind, [])}
    return {(producer[dep], name) for name, stage in stages.items() for dep in stage["deps"] if dep in producer}


def test_the_committed_dvc_yaml_is_the_dag_kedro_runs():
    from kedro.framework.project import pipelines

    from alignops.dvc_stages import kedro_stages, render
    from alignops.pipeline_registry import journey

    specs = kedro_stages(REPO_ROOT)
    committed = (REPO_ROOT / "dvc.yaml").read_text()
    assert committed == render(specs), "dvc.yaml is stale: run `alignops-dvc`"
    stages = yaml.safe_load(committed)["stages"]
    # the stage graph DVC builds is the pipeline graph Kedro runs
    kedro_edges = {(a, b) for a in stages for b in stages if a != b
                   and pipelines[a].all_outputs() & pipelines[b].inputs()}
    assert _stage_edges(stages) == kedro_edges
    assert list(stages) == journey()  # one stage per pipeline of the journey, in its order
    for name, stage in stages.items():
        assert stage["cmd"] == f"alignops-run --pipelines {name}"
        assert f"src/alignops/pipelines/{name}" in stage["deps"], name
        untracked = ("mlruns", "mlflow.db", "data/06_models/checkpoints")
        assert not any(path.startswith(untracked) for path in stage.get("outs", [])), name
    assert stages["evaluation"]["metrics"] == ["data/08_reporting/evaluation_summary.json"]
    assert {"conf/base/parameters_ppo.yml": ["ppo"]} in stages["ppo"]["params"]
    config = (REPO_ROOT / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "remote = local" in config


def test_the_check_fails_when_the_catalog_moves_a_path_dvc_does_not_know(tmp_path):
    project = tmp_path / "project"
    for item in ("conf", "src"):
        shutil.copytree(REPO_ROOT / item, project / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for item in ("pyproject.toml", "dvc.yaml"):
        shutil.copy2(REPO_ROOT / item, project / item)
    catalog = project / "conf" / "base" / "catalog_evaluation.yml"
    catalog.write_text(catalog.read_text().replace("evaluation_summary.json", "evaluation_figures.json"))
    result = subprocess.run([str(BIN / "alignops-dvc"), "--check", "--project", str(project)], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "+    - data/08_reporting/evaluation_figures.json" in result.stdout
    assert "-    - data/08_reporting/evaluation_summary.json" in result.stdout
    assert "dvc.yaml is stale" in result.stdout


# -- the world: repro, no-op, one parameter, push/pull, rebuild, experiments ---------------------------


@pytest.mark.slow
def test_repro_reruns_what_changed_and_every_registered_model_can_be_rebuilt(tmp_path):
    remote = tmp_path / "remote"
    repo = make_repo(tmp_path / "repo", "test", remote)
    run(repo, "alignops-dvc", "--env", "test")
    commit(repo, "the project, its DVC stages for the test environment")

    # 1. A fresh repository builds everything, in the DAG's order; one MLflow parent run holds a run per stage.
    first = run(repo, "dvc", "repro")
    assert ran(first) == WORLD_STAGES
    client = mlflow_client(repo)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "dvc.repro" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["dvc.stage"] for r in children) == sorted(WORLD_STAGES)
    assert all(r.info.status == "FINISHED" for r in children)
    assert parent.data.tags["dvc.stages"].split(",") == WORLD_STAGES
    assert parent.data.params["ppo.kl_coef"] == "0.08" and parent.data.params["world.n_ranking_items"] == "40"
    assert any(key.startswith("eval/") for key in parent.data.metrics), sorted(parent.data.metrics)
    ppo_run = next(r for r in children if r.data.tags["dvc.stage"] == "ppo")
    digests = lock_digests(repo)
    assert ppo_run.data.tags["dvc.dep.data/06_models/reward"] == digests["data/06_models/reward"]

    # 2. Nothing changed: nothing runs.
    second = run(repo, "dvc", "repro")
    assert ran(second) == [] and "up to date" in second.stdout
    commit(repo, "dvc.lock of the first reproduction")
    run(repo, "dvc", "push")  # as a commit is pushed: its outputs, for whoever checks it out

    # 3. One PPO parameter: PPO and what depends on it, nothing upstream.
    set_ppo_kl(repo, 0.1)
    kl_commit = commit(repo, "ppo.kl_coef 0.1")
    third = run(repo, "dvc", "repro")
    assert ran(third) == AFTER_PPO
    after = lock_digests(repo)
    assert after["data/06_models/sft"] == digests["data/06_models/sft"]
    assert after["data/06_models/ppo"] != digests["data/06_models/ppo"]
    commit(repo, "dvc.lock of kl_coef 0.1")

    # Every registered version says where it came from: commit, DVC stage inputs.
    candidate = client.get_model_version_by_alias("alignops-policy", "candidate")
    tags = candidate.tags
    assert tags["git.commit"] == kl_commit and tags["git.dirty"] == "false"
    assert tags["dvc.dep.data/06_models/ppo"] == after["data/06_models/ppo"]
    summary = "data/08_reporting/evaluation_summary.json"
    assert tags[f"dvc.dep.{summary}"] == after[summary]

    # 4. push, then a second machine: clone, pull, and every output is back, digest for digest.
    run(repo, "dvc", "push")
    assert any(remote.rglob("*")), "nothing reached the remote"
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    run(clone, "dvc", "pull")
    for path in lock_digests(clone):
        assert (clone / path).exists(), path
    assert lock_digests(clone) == lock_digests(repo)
    status = run(clone, "dvc", "status")
    assert "up to date" in status.stdout, status.stdout

    # 5. Rebuild the registered model from its tags: its commit, dvc pull, dvc repro -> the same files.
    run(clone, "git", "checkout", "-q", tags["git.commit"])
    run(clone, "dvc", "pull")  # the outputs of that commit's dvc.lock (the first reproduction)
    copy_empty_mlflow_store(clone / "mlflow.db")
    rebuilt = run(clone, "dvc", "repro")
    assert ran(rebuilt) == AFTER_PPO or "cached" in rebuilt.stdout
    for name, md5 in tags.items():
        if name.startswith("dvc.dep.data/06_models/"):
            assert lock_digests(clone)[name.removeprefix("dvc.dep.")] == md5, name
    # ...and really rebuilt, not restored: PPO again from scratch gives the same bytes
    forced = run(clone, "dvc", "repro", "--force", "--single-item", "ppo")
    assert ran(forced) == ["ppo"]
    assert lock_digests(clone)["data/06_models/ppo"] == tags["dvc.dep.data/06_models/ppo"]

    # 6. The README's sweep: experiments (one -S each) queued, then run in copies of the repository
    # under .dvc/tmp (each with a warm server of its own, gone with its copy). DVC runs what the
    # parameter changes, `dvc exp show` lists the figures, and the project's store records them.
    run(repo, "dvc", "exp", "run", "--queue", "-n", "kl-03", "-S", "conf/base/parameters_ppo.yml:ppo.kl_coef=0.3")
    run(repo, "dvc", "exp", "run", "--run-all")
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    experiments = {exp["name"]: exp for row in shown for exp in (row.get("experiments") or [])
                   for exp in exp["revs"]}
    assert "kl-03" in experiments, shown
    data = experiments["kl-03"]["data"]
    assert data["params"]["conf/base/parameters_ppo.yml"]["data"]["ppo"]["kl_coef"] == 0.3
    metrics = data["metrics"]["data/08_reporting/evaluation_summary.json"]["data"]
    assert metrics["policies"]["ppo"]["gold_win_rate_vs_sft"]["value"] is not None
    exp_parents = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                   if r.data.tags.get("dvc.exp_name") == "kl-03" and "dvc.repro" in r.data.tags]
    assert len(exp_parents) == 1 and exp_parents[0].data.params["ppo.kl_coef"] == "0.3"
    assert exp_parents[0].data.tags["dvc.stages"].split(",") == AFTER_PPO


# -- a user's own data: dvc add, a new version reruns from validation, dvc checkout restores ----------


@pytest.mark.slow
def test_a_new_version_of_the_users_file_reruns_from_validation_and_checkout_restores_the_old(tmp_path):
    repo = make_repo(tmp_path / "repo", USER_ENV, tmp_path / "remote")
    make_user_env(repo)
    raw = repo / "data" / "01_raw" / "hh.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(HH_SAMPLE, "rt") as handle:
        rows = handle.read().splitlines()
    raw.write_text("\n".join(rows[:300]) + "\n")
    catalog = repo / "conf" / USER_ENV / "catalog.yml"
    entry = yaml.safe_load(catalog.read_text())
    entry["raw_preferences"]["filepath"] = "data/01_raw/hh.jsonl"
    catalog.write_text(yaml.safe_dump(entry))
    run(repo, "dvc", "add", "data/01_raw/hh.jsonl")
    run(repo, "alignops-dvc", "--env", USER_ENV)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert "data_generation" not in stages and stages["ingestion"]["deps"][0] == "data/01_raw/hh.jsonl"
    assert all(stage["cmd"].endswith(f"--env {USER_ENV}") for stage in stages.values())
    commit(repo, "my preference file, version 1")

    first = run(repo, "dvc", "repro")
    assert ran(first)[:2] == ["ingestion", "data_validation"] and len(ran(first)) == len(stages)
    old = lock_digests(repo)
    commit(repo, "outputs of version 1")

    # version 2 of the file: 60 more pairs
    raw.write_text("\n".join(rows[:360]) + "\n")
    run(repo, "dvc", "add", "data/01_raw/hh.jsonl")
    second = run(repo, "dvc", "repro")
    assert set(ran(second)) == set(stages) and ran(second)[0] == "ingestion"
    new = lock_digests(repo)
    assert new["data/03_primary/preferences.parquet"] != old["data/03_primary/preferences.parquet"]
    commit(repo, "version 2 and its outputs")

    # back to version 1: git checkout of the pointers, dvc checkout of the data -> the old outputs
    run(repo, "git", "checkout", "-q", "HEAD~1", "--", "data/01_raw/hh.jsonl.dvc", "dvc.lock")
    run(repo, "dvc", "checkout")
    assert len((raw.read_text()).splitlines()) == 300
    status = run(repo, "dvc", "status")
    assert "up to date" in status.stdout, status.stdout
    assert lock_digests(repo) == old
