"""Several processes on one sqlite MLflow store at once, as two terminals or ``dvc exp run
--run-all --jobs 2`` make them: real ``kedro run`` processes and real registrations.

Both tests start from a store no process has opened yet, the case that failed (the schema's
creation and migrations raced, see ``alignops.tracking.store``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from alignops.tracking.registry import CHAMPION, Evidence, alias_version
from alignops.tracking.store import store_lock
from tests.helpers import (
    REPO_ROOT,
    copy_empty_mlflow_store,
    environment_without_mlflow_run,
    kedro_cli,
    make_project_copy,
)

POLICY, REWARD = "alignops-policy", "alignops-reward-model"


def project_on(store: Path, folder: Path, data: Path) -> Path:
    """A project copy with ``data`` as its data/, tracking into ``store`` (a ``sqlite:///``
    file outside it, as a DVC experiment's copy tracks into the repository's store)."""
    project = make_project_copy(folder, tracking_store=False)
    shutil.copytree(data, project / "data", dirs_exist_ok=True)
    uri = f"sqlite:///{store}"
    server = {"mlflow_tracking_uri": uri, "mlflow_registry_uri": uri}
    (project / "conf" / "test" / "mlflow.yml").write_text(yaml.safe_dump({"server": server}))
    return project


@pytest.mark.slow
def test_two_kedro_runs_at_once_on_a_new_store_both_finish_and_are_both_recorded(
    tmp_path: Path, upstream_data: Callable[[str], Path]
):
    store = tmp_path / "store" / "mlflow.db"  # no file yet: both runs' first connections create it
    projects = [project_on(store, tmp_path / name, upstream_data("data_validation")) for name in ("a", "b")]
    env = environment_without_mlflow_run()

    def run(project: Path):
        return kedro_cli(project, "run", "--env", "test", "--pipelines", "sft", env=env, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, projects))
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("alignops")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        losses = client.get_metric_history(run.info.run_id, "loss/sft")
        assert losses and len(losses) == len(client.get_metric_history(runs[0].info.run_id, "loss/sft"))
        assert run.data.params["sft.epochs"] and run.data.tags["kedro.pipelines"] == "sft"


class SlowAliasClient(MlflowClient):
    """A real client whose reads of an alias take a second, as a busy store or a slow disk
    might: the time between the gate reading ``champion`` and moving it is then long enough
    for the other process's gate to act in it, every time instead of now and then."""

    def get_model_version_by_alias(self, name: str, alias: str):
        try:
            return super().get_model_version_by_alias(name, alias)
        finally:
            time.sleep(1.0)


def register_at_once(uri: str, experiment_id: str, seed: int, rendezvous: str, decision_file: str) -> None:
    """One run's registration (``register_run``) of a tiny policy, in a process of its own (a
    subprocess runs it: ``python -c``). Its head-to-head waits in ``rendezvous`` until the other
    process has judged its candidate too, so both gates read the same champion (none) before
    either acts. The decision goes to ``decision_file`` as JSON."""
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = uri
    import mlflow
    import torch

    from alignops.models.generation import GenerationConfig
    from alignops.models.reward import RewardModel, build_reward_backbone
    from alignops.tracking.registration import register_run
    from alignops.tracking.registry import RegistryConfig
    from tests.helpers import TINY_LLAMA, make_tiny_policy, make_tiny_tokenizer

    torch.set_num_threads(1)
    tokenizer = make_tiny_tokenizer()
    policy = make_tiny_policy(tokenizer, seed)
    backbone, rm_tokenizer = build_reward_backbone("sft", policy, tokenizer)
    reward_model = RewardModel(backbone.eval(), rm_tokenizer, TINY_LLAMA.prompt_template,
                               TINY_LLAMA.response_prefix, 16, 16)
    figures = {"gold_win_rate_vs_sft": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}, "rm_mean": 0.5}
    summary = {"judge": "gold", "policies": {"sft": figures}, "reward_model": {"heldout_accuracy": 0.75}}

    def head_to_head(candidate: str, champion: str | None) -> Evidence:
        meet(Path(rendezvous), str(seed), PROCESSES)
        return Evidence("advantage", 0.5, 0.3, 0.7, 8, "gold", "prefers every candidate", 1.0, 0.5)

    with mlflow.start_run(experiment_id=experiment_id) as run:
        decision = register_run(
            SlowAliasClient(), run.info.run_id, {"sft": policy}, tokenizer, reward_model, summary,
            TINY_LLAMA, GenerationConfig(max_new_tokens=8), RegistryConfig(policy="sft"), head_to_head,
        )
    Path(decision_file).write_text(json.dumps(decision, default=str))


PROCESSES = 2


def meet(folder: Path, name: str, count: int, timeout_s: float = 120) -> None:
    """Wait until ``count`` processes have arrived in ``folder`` (each leaves a file named after itself)."""
    (folder / name).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {[p.name for p in folder.iterdir()]} arrived in {folder}")
        time.sleep(0.05)


@pytest.mark.slow
def test_two_registrations_at_once_give_two_versions_and_one_champion(tmp_path: Path):
    uri = f"sqlite:///{copy_empty_mlflow_store(tmp_path / 'mlflow.db')}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("alignops", artifact_location=str(tmp_path / "mlruns"))
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    files = [tmp_path / f"decision{seed}.json" for seed in range(PROCESSES)]
    env = {**environment_without_mlflow_run(), "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.tracking.test_concurrency import register_at_once; "
             "register_at_once(*sys.argv[1:3], int(sys.argv[3]), *sys.argv[4:])",
             uri, experiment_id, str(seed), str(rendezvous), str(file)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for seed, file in enumerate(files)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
    first, second = sorted((json.loads(file.read_text()) for file in files), key=lambda d: d["policy_version"])

    # every registration has a version of its own
    assert (first["policy_version"], second["policy_version"]) == ("1", "2")
    assert {first["reward_model_version"], second["reward_model_version"]} == {"1", "2"}
    # the same evidence against the same (absent) champion: whichever gate acted first promotes,
    # the other finds the champion moved under it and holds; the aliases say the same
    promoted = [d for d in (first, second) if d["promoted"]]
    held = [d for d in (first, second) if not d["promoted"]]
    assert len(promoted) == 1 and len(held) == 1, (first["reason"], second["reason"])
    winner, loser = promoted[0], held[0]
    assert "champion moved to v" + winner["policy_version"] in loser["reason"]
    assert alias_version(client, POLICY, CHAMPION) == winner["policy_version"]
    assert alias_version(client, REWARD, CHAMPION) == winner["reward_model_version"]
    for decision in (winner, loser):
        tags = client.get_model_version(POLICY, decision["policy_version"]).tags
        assert tags["promotion.decision"] == decision["decision"]


def test_a_sqlite_store_is_locked_by_a_file_beside_it_and_other_stores_by_nothing(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    other_process = [sys.executable, "-c", "import sys; from alignops.tracking.store import store_lock\n"
                     "with store_lock(sys.argv[1], timeout_s=0.5): print('got it')", uri]
    with store_lock(uri), store_lock(uri):  # re-entrant in one process
        assert (tmp_path / "new" / "mlflow.db.lock").is_file()
        waited = subprocess.run(other_process, capture_output=True, text=True, timeout=60)
        assert waited.returncode != 0 and "another process has held" in waited.stderr
    assert subprocess.run(other_process, capture_output=True, text=True, timeout=60).stdout == "got it\n"
    with store_lock("http://127.0.0.1:5000"), store_lock("sqlite:///:memory:"), store_lock(None):
        pass
