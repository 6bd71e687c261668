"""`kedro run` as a user runs it, twice, then everything MLflow should hold afterwards.

One throwaway project (a git repository, so the commit is tagged) runs the whole
default DAG in the tiny `test` environment with Kedro's ParallelRunner (worker
processes log into the parent's run). The gate holds that run's policy, v1: on the test
world's 30 prompts its interval against the run's own SFT policy does not clear the
margin. A person makes v1 champion with ``alignops-promote``, and the project runs again
sequentially registering its SFT policy (v2), which the gate judges head to head with
champion v1 and holds (``tests/conftest.py``, ``tracked_project``).
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

from alignops.tracking.promote import version_lines
from alignops.tracking.registry import SFT_BASELINE, data_hash
from alignops.tracking.run_info import file_md5
from tests.helpers import TRACKED_FIRST_RUN_DATA, TRACKED_OVERRIDE_REASON, environment_without_mlflow_run

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
    # the files the first run read: the world's rankings, and the model inputs it wrote from them
    data = tracked_project / TRACKED_FIRST_RUN_DATA
    assert {name: value for name, value in tags.items() if name.startswith("data/")} == {
        "data/raw_preferences/preference_rankings.jsonl": file_md5(data / "01_raw/world/preference_rankings.jsonl"),
        "data/sft_demonstrations/sft_demonstrations.jsonl": file_md5(data / "05_model_input/sft_demonstrations.jsonl"),
        "data/eval_prompts/eval_prompts.jsonl": file_md5(data / "05_model_input/eval_prompts.jsonl"),
    }
    assert tags["data.hash"] == data_hash(tags)
    # the same world from the same seed: the second run saw the same bytes
    assert runs[1].data.tags["data.hash"] == tags["data.hash"]


def test_every_loop_metric_is_logged_per_step(runs, client, tracked_project):
    run_id = runs[0].info.run_id
    reporting = tracked_project / "data" / "08_reporting"
    histories = {stage: json.loads((reporting / f"{stage}_history.json").read_text())
                 for stage in ("sft", "reward", "audit_judge", "ppo", "dpo")}
    for stage, metric in [
        ("sft", "loss/sft"),
        ("sft", "eval/sft/loss"),
        ("reward", "loss/reward"),
        ("reward", "eval/reward/accuracy"),
        ("audit_judge", "loss/audit_judge"),
        ("audit_judge", "eval/audit_judge/accuracy"),
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
    # the frontier by PPO step (test env: SFT, the snapshot at 1, the last at 2) and the alarm's verdict
    frontier = json.loads((reporting / "frontier.json").read_text())
    expected = [(p["step"], pytest.approx(p["judge"]["value"])) for p in frontier["points"] if p["policy"] == "ppo"]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "frontier/ppo/gold")) == expected
    alarm = json.loads((reporting / "overoptimisation.json").read_text())
    tags = runs[0].data.tags
    assert tags["overoptimisation.alarm"] == ("fired" if alarm["fired"] else "quiet")
    assert tags["overoptimisation.peak_step"] == str(alarm["peak_step"])


def test_artifacts_hold_curves_reports_data_docs_and_the_sample_table(runs, client):
    run_id = runs[0].info.run_id
    listed = {folder: {Path(a.path).name for a in client.list_artifacts(run_id, folder)}
              for folder in ("curves", "reports", "data_docs", "tables")}
    assert listed["curves"] == {"sft.png", "reward.png", "audit_judge.png", "ppo.png", "dpo.png"}
    assert {"evaluation_summary.json", "evaluation.png", "data_report.json", "data_report.png",
            "validation_report.json"} <= listed["reports"]
    # the report stage's page and its data, beside the evaluation's
    assert {"report.html", "frontier.json", "frontier.png", "overoptimisation.json",
            "policy_diagnostics.json"} <= listed["reports"]
    assert "index.html" in listed["data_docs"]
    with tempfile.TemporaryDirectory() as folder:
        logged = json.loads(Path(client.download_artifacts(run_id, "tables/sample_generations.json", folder))
                            .read_text())
    table = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert {"prompt", "response", "reward_model_score", "gold_score", "step"} <= set(table.columns)
    assert set(table["source"]) == {"ppo_rollout", "evaluation"}
    evaluated = table[table["source"] == "evaluation"]
    assert evaluated["gold_score"].notna().all() and evaluated["reward_model_score"].notna().all()


def test_the_gate_held_v1_a_person_promoted_it_and_the_gate_held_v2_against_it(runs, client, tracked_project):
    first, second = (json.loads(p.read_text()) for p in sorted((tracked_project / "decisions").glob("*.json")))
    summary = json.loads((tracked_project / TRACKED_FIRST_RUN_DATA / "08_reporting/evaluation_summary.json")
                         .read_text())
    assert first["policy_version"] == "1" and first["method"] in {"sft", "ppo", "dpo"}
    assert second["policy_version"] == "2" and second["method"] == "sft"
    # each decision is the head-to-head's interval against the margin, by the world's gold judge
    for decision in (first, second):
        assert decision["decision"] == "held" and not decision["promoted"]
        assert decision["metric"] == "advantage" and decision["judge"] == "gold"
        assert decision["n_prompts"] == summary["n_prompts"] == 30
        assert decision["ci_low"] <= decision["value"] <= decision["ci_high"]
        assert decision["ci_low"] <= decision["margin"] == 0.02  # why it was held
        interval = f"[{decision['ci_low']:+.3f}, {decision['ci_high']:+.3f}]"
        assert f"{decision['value']:+.3f} {interval}" in decision["reason"] and "under the margin" in decision["reason"]
    # the first against its own SFT policy (no champion yet); the second against champion v1
    assert first["compared_to"] == SFT_BASELINE and first["champion_version"] is None
    assert second["compared_to"] == "v1" and second["champion_version"] == "1"
    # the second run's SFT policy is the first run's (same data, same seed), judged on the same
    # prompts with the same seed: its head-to-head with v1 is the first one mirrored
    assert second["value"] == pytest.approx(-first["value"])
    assert second["candidate_mean"] == pytest.approx(first["baseline_mean"])
    assert second["baseline_mean"] == pytest.approx(first["candidate_mean"])
    assert [r.data.tags["registry.decision"] for r in runs] == ["held", "held"]

    assert str(client.get_model_version_by_alias("alignops-policy", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("alignops-policy", "candidate").version) == "2"
    assert str(client.get_model_version_by_alias("alignops-reward-model", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("alignops-reward-model", "candidate").version) == "2"
    held = client.get_model_version("alignops-policy", "2").tags
    assert held["method"] == "sft" and held["promotion.decision"] == "held"
    assert held["promotion.reason"] == second["reason"] and held["promotion.compared_to"] == "v1"
    assert held["promotion.judge"] == "gold" and held["promotion.n_prompts"] == "30"
    assert [float(held[f"promotion.{end}"]) for end in ("value", "ci_low", "ci_high")] == pytest.approx(
        [second["value"], second["ci_low"], second["ci_high"]], abs=1e-4)
    # the override keeps the gate's evidence on the version beside the person's reason
    champion = client.get_model_version("alignops-policy", "1").tags
    assert champion["promotion.decision"] == "overridden" and champion["promotion.replaced"] == "none"
    assert champion["promotion.override_reason"] == TRACKED_OVERRIDE_REASON
    assert champion["promotion.reason"] == first["reason"] and champion["promotion.compared_to"] == SFT_BASELINE
    assert champion["method"] == first["method"] and champion["data_hash"] == runs[0].data.tags["data.hash"]
    for figure in ("gold_win_rate_vs_sft", "gold_win_rate_vs_sft.ci_low", "gold_win_rate_vs_sft.ci_high"):
        assert float(champion[f"eval.{figure}"]) == pytest.approx(first["figures"][figure], abs=1e-4)
    reward_model = client.get_model_version("alignops-reward-model", "1").tags
    assert reward_model["promotion.decision"] == "overridden"
    # it followed its policy: the person promoted the policy alone
    assert reward_model["promotion.override_reason"] == f"with alignops-policy v1: {TRACKED_OVERRIDE_REASON}"
    # what `alignops-promote` lists: newest first, aliases, decision and why
    assert version_lines(client, "alignops-policy") == [
        f"v2    candidate            held       {second['reason']}",
        f"v1    champion             overridden {TRACKED_OVERRIDE_REASON}",
    ]


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
