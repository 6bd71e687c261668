"""`kedro run` as a user runs it, twice, then everything MLflow should hold afterwards.

One throwaway project (a git repository, so the commit is tagged) runs the whole
default DAG in the tiny `test` environment with Kedro's ParallelRunner (worker
processes log into the parent's run), then runs it again sequentially registering the
SFT policy, which can never beat the first run's best by the gate's margin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from alignops.tracking.run_info import file_md5
from tests.helpers import TRACKED_FIRST_RUN_DATA, environment_without_mlflow_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tracked_project: Path) -> MlflowClient:
    uri = f"sqlite:///{tracked_project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("alignops")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_one_finished_run_per_kedro_run_named_after_its_pipelines(runs, tracked_project):
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=tracked_project,
                          capture_output=True, text=True).stdout.strip()
    assert [r.info.run_name for r in runs] == [f"__default__ test {head}"] * 2
    assert {r.info.status for r in runs} == {"FINISHED"}


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def test_every_parameter_the_run_used_is_logged_flattened_and_namespaced(runs, tracked_project):
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import configure_project, pipelines

    from alignops.settings import CONFIG_LOADER_ARGS

    configure_project("alignops")
    used = {name[len("params:"):] for name in pipelines["__default__"].inputs() if name.startswith("params:")}
    loader = OmegaConfigLoader(str(tracked_project / "conf"), env="test", **CONFIG_LOADER_ARGS)
    expected = flatten({name: loader["parameters"][name] for name in used})
    assert {"sft.learning_rate", "ppo.kl_coef", "reward.learning_rate", "dpo.beta", "registry.margin"} <= set(expected)
    params = runs[0].data.params
    assert params == expected  # and nothing else: logging the models adds no run params
    assert runs[1].data.params["registry.policy"] == "sft"


def test_tags_name_commit_environment_pipelines_and_input_digests(runs, tracked_project):
    tags = runs[0].data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tracked_project, capture_output=True, text=True)
    assert tags["git.commit"] == head.stdout.strip() and tags["git.dirty"] == "false"
    assert tags["kedro.env"] == "test" and tags["kedro.pipelines"] == "__default__"
    assert tags["runner"].endswith("ParallelRunner") and "0x" not in tags["runner"]
    # the tag reruns the run: pipelines, environment and runtime params
    assert tags["kedro_command"] == "kedro run --pipelines=__default__ --env=test"
    assert runs[1].data.tags["kedro_command"] == (
        "kedro run --pipelines=__default__ --env=test --params=registry.policy=sft")
    world = tracked_project / "data" / "01_raw" / "world"
    assert tags["data/raw_preferences/preference_rankings.jsonl"] == file_md5(world / "preference_rankings.jsonl")
    assert tags["data/sft_demonstrations/sft_demonstrations.jsonl"] == file_md5(world / "sft_demonstrations.jsonl")
    assert len(tags["data.hash"]) == 32


def test_every_loop_metric_is_logged_per_step(runs, client, tracked_project):
    run_id = runs[0].info.run_id
    reporting = tracked_project / "data" / "08_reporting"
    histories = {stage: json.loads((reporting / f"{stage}_history.json").read_text())
                 for stage in ("sft", "reward", "ppo", "dpo")}
    for stage, metric in [
        ("sft", "loss/sft"),
        ("sft", "eval/sft/loss"),
        ("reward", "loss/reward"),
        ("reward", "eval/reward/accuracy"),
        ("ppo", "objective/kl"),
        ("ppo", "policy/clipfrac"),
        ("dpo", "loss/dpo"),
        ("dpo", "eval/dpo/rewards/accuracies"),
    ]:
        expected = [(row["step"], pytest.approx(row[metric], rel=1e-6)) for row in histories[stage] if metric in row]
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
        assert len(expected) >= 2 and logged == expected, metric
    metrics = runs[0].data.metrics
    # a metric's name in a history file is its name in MLflow, with no mapping between them
    assert {name for rows in histories.values() for row in rows for name in row if name != "step"} <= set(metrics)
    summary = json.loads((reporting / "evaluation_summary.json").read_text())
    assert metrics["evaluation/ppo/gold_win_rate_vs_sft"] == pytest.approx(
        summary["policies"]["ppo"]["gold_win_rate_vs_sft"]["value"])
    assert metrics["evaluation/ppo/gold_win_rate_vs_sft.ci_low"] == pytest.approx(
        summary["policies"]["ppo"]["gold_win_rate_vs_sft"]["ci_low"])
    assert metrics["evaluation/reward_model/heldout_accuracy"] == pytest.approx(
        summary["reward_model"]["heldout_accuracy"])


def test_artifacts_hold_curves_reports_data_docs_and_the_sample_table(runs, client):
    run_id = runs[0].info.run_id
    listed = {folder: {Path(a.path).name for a in client.list_artifacts(run_id, folder)}
              for folder in ("curves", "reports", "data_docs", "tables")}
    assert listed["curves"] == {"sft.png", "reward.png", "ppo.png", "dpo.png"}
    assert {"evaluation_summary.json", "evaluation.png", "data_report.json", "data_report.png",
            "validation_report.json"} <= listed["reports"]
    assert "index.html" in listed["data_docs"]
    with tempfile.TemporaryDirectory() as folder:
        logged = json.loads(Path(client.download_artifacts(run_id, "tables/sample_generations.json", folder))
                            .read_text())
    table = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert {"prompt", "response", "reward_model_score", "gold_score", "step"} <= set(table.columns)
    assert set(table["source"]) == {"ppo_rollout", "evaluation"}
    evaluated = table[table["source"] == "evaluation"]
    assert evaluated["gold_score"].notna().all() and evaluated["reward_model_score"].notna().all()


def test_registry_has_both_models_and_the_gate_kept_the_champion(runs, client, tracked_project):
    first, second = (json.loads(p.read_text()) for p in sorted((tracked_project / "decisions").glob("*.json")))
    assert first["promoted"] and first["policy_version"] == "1"
    assert not second["promoted"] and second["method"] == "sft" and second["policy_version"] == "2"

    assert str(client.get_model_version_by_alias("alignops-policy", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("alignops-policy", "candidate").version) == "2"
    assert str(client.get_model_version_by_alias("alignops-reward-model", "champion").version) == "1"
    held = client.get_model_version("alignops-policy", "2").tags
    assert held["method"] == "sft" and held["promotion.decision"] == "held"
    assert "under the margin" in held["promotion.reason"] and held["promotion.compared_to"] == "v1"
    champion = client.get_model_version("alignops-policy", "1").tags
    assert champion["method"] in {"sft", "ppo", "dpo"} and champion["data_hash"] == runs[0].data.tags["data.hash"]
    assert float(champion["eval.gold_win_rate"]) == pytest.approx(first["figures"]["gold_win_rate"], abs=1e-4)


def test_champion_policy_and_reward_model_load_in_a_fresh_process(tracked_project):
    script = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
import torch
torch.manual_seed(0)
prompts = ["Where is my order?", "Can I change my delivery address?", "How do I reset my password?"]
policy = mlflow.pyfunc.load_model("models:/alignops-policy@champion")
replies = policy.predict(prompts)
# generation settings are inference params: greedy decoding twice gives the same replies,
# which are the pipeline's own greedy decode of the same policy (pipeline_greedy)
greedy = [policy.predict(prompts, params={"do_sample": False, "max_new_tokens": 12}) for _ in range(2)]
rm = mlflow.pyfunc.load_model("models:/alignops-reward-model@champion")
rewards = rm.predict(pd.DataFrame({"prompt": prompts + prompts[:1], "response": replies + ["It ships tomorrow."]}))
print(json.dumps({"prompts": prompts, "replies": replies, "greedy": greedy, "rewards": rewards["reward"].tolist()}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{tracked_project / 'mlflow.db'}"],
        cwd=tracked_project.parent, capture_output=True, text=True, timeout=300,
        # a fresh shell: no tracking or registry URI left behind by this worker's other runs
        env=environment_without_mlflow_run(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # the test env's policy is a few steps from random: some replies may be blank, not all
    assert len(out["replies"]) == 3 and all(isinstance(r, str) for r in out["replies"])
    assert any(r.strip() for r in out["replies"])
    assert out["greedy"][0] == out["greedy"][1] and len(out["greedy"][0]) == 3
    assert out["greedy"][0] == pipeline_greedy(tracked_project, out["prompts"], max_new_tokens=12)
    assert len(out["rewards"]) == 4 and all(abs(r) < 1e6 for r in out["rewards"])


def pipeline_greedy(project: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The first run's champion policy, as its run saved it, decoded greedily by the pipeline's own
    ``sample_responses`` with the run's model and generation parameters."""
    from kedro.config import OmegaConfigLoader

    from alignops.models import GenerationConfig, ModelConfig, load_model, load_tokenizer, sample_responses
    from alignops.settings import CONFIG_LOADER_ARGS

    parameters = OmegaConfigLoader(str(project / "conf"), env="test", **CONFIG_LOADER_ARGS)["parameters"]
    method = json.loads((project / "decisions" / "1.json").read_text())["method"]
    models = project / TRACKED_FIRST_RUN_DATA / "06_models"
    settings = GenerationConfig(**{**parameters["generation"], "max_new_tokens": max_new_tokens})
    return sample_responses(
        load_model(models / method), load_tokenizer(str(models / "tokenizer")), prompts,
        ModelConfig(**parameters["model"]), settings, seed=None, do_sample=False,
    ).texts
