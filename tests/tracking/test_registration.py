"""A run's registration through the registry node, on a real MLflow store with tiny policies.

The gate samples the candidate loaded back from the registry (and the champion likewise).
The hand-made judges here like exactly the replies one in-memory policy gives under the
gate's sampling: a promotion by them also shows that the served artifact samples what
the in-memory policy did.
"""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from alignops.evaluation.judges import GOLD_DESCRIPTION, Judge
from alignops.models.generation import GenerationConfig, sample_responses
from alignops.models.reward import RewardModel, build_reward_backbone
from alignops.pipelines.registry import create_pipeline
from alignops.pipelines.registry.nodes import register_judged, register_models, register_models_with_audit_judge
from alignops.tracking.models import log_reward_model
from alignops.tracking.registry import CANDIDATE, CHAMPION, SFT_BASELINE, alias_version
from alignops.world import world_spec
from tests.helpers import TINY_LLAMA, make_tiny_policy

PROMPTS = ["where is my order", "reset my password please", "refund my charge", "close my account",
           "help with the order", "my password is where", "thanks for the refund", "no charge please"]
EVAL_PROMPTS = pd.DataFrame({"prompt": PROMPTS})
SETTINGS = GenerationConfig(max_new_tokens=8)
SAMPLING = {"seed": 3, "batch_size": 4}
PARAMETERS = {
    "model_params": dataclasses.asdict(TINY_LLAMA),
    "generation": dataclasses.asdict(SETTINGS),
    "evaluation": {**SAMPLING, "best_of_n": 0},
    "params": {"margin": 0.02},
}
POLICY, REWARD = "alignops-policy", "alignops-reward-model"
QUIET = {"fired": False, "judge": "gold", "peak_step": 4, "last_step": 4, "offered_step": 4, "consecutive": 2,
         "message": "no over-optimisation", "checkpoints": []}
NO_ALARM = ({"judge": "gold", "points": []}, QUIET, {})
"""The report's frontier, alarm and PPO snapshots for a run whose alarm stayed quiet."""


@pytest.fixture(scope="module")
def other_policy(tokenizer):
    """A second random tiny Llama: every reply differs from ``sft_model``'s."""
    return make_tiny_policy(tokenizer, seed=1)


@pytest.fixture(scope="module")
def reward_model(sft_model, tokenizer) -> RewardModel:
    model, rm_tokenizer = build_reward_backbone("sft", sft_model, tokenizer)
    return RewardModel(model.eval(), rm_tokenizer, TINY_LLAMA.prompt_template, TINY_LLAMA.response_prefix, 16, 16)


def fan_of(policy, tokenizer) -> Judge:
    """A judge that likes exactly the replies ``policy`` gives under the gate's sampling."""
    texts = sample_responses(policy, tokenizer, PROMPTS, TINY_LLAMA, SETTINGS, **SAMPLING).texts
    liked = set(zip(PROMPTS, texts, strict=True))

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([float(pair in liked) for pair in zip(prompts, responses, strict=True)])

    return Judge("gold", "likes one policy's replies and nothing else", score)


def summary(best: str) -> dict:
    """An evaluation summary in which ``best`` has the highest gold win rate against SFT."""

    def figures(method: str) -> dict:
        rate = 0.5 if method == "sft" else 0.7 if method == best else 0.4
        return {
            "gold_win_rate_vs_sft": {"value": rate, "ci_low": rate - 0.1, "ci_high": rate + 0.1},
            "gold_mean": {"value": 1.0, "ci_low": 0.9, "ci_high": 1.1},
            "rm_mean": 0.5,
            "kl_to_sft": 0.0 if method == "sft" else 1.5,
            "mean_length": 6.0,
        }

    return {
        "judge": "gold",
        "judges": {"gold": "the embedded world's gold judge"},
        "policies": {method: figures(method) for method in ("sft", "ppo", "dpo")},
        "reward_model": {"heldout_accuracy": 0.75},
    }


def register(sft, ppo, judge, tokenizer, reward_model, **params) -> dict:
    """One run's registration with PPO as its best policy, judged by ``judge``."""
    with mlflow.start_run():
        return register_judged(
            {"sft": sft, "ppo": ppo, "dpo": sft}, tokenizer, reward_model, summary("ppo"), EVAL_PROMPTS, judge,
            **{**PARAMETERS, "params": {**PARAMETERS["params"], **params}},
        )


def test_a_better_first_run_becomes_champion_and_the_same_model_again_is_held(
    client, sft_model, other_policy, tokenizer, reward_model
):
    first = register(sft_model, other_policy, fan_of(other_policy, tokenizer), tokenizer, reward_model)
    assert first["promoted"] and first["decision"] == "promoted" and first["method"] == "ppo"
    assert first["compared_to"] == SFT_BASELINE and first["n_prompts"] == len(PROMPTS)
    assert (first["value"], first["ci_low"], first["ci_high"]) == (1.0, 1.0, 1.0)
    assert alias_version(client, POLICY, CHAMPION) == "1" == alias_version(client, REWARD, CHAMPION)

    # the same policy again, through the gold node: identical replies, an interval of exactly [0, 0]
    with mlflow.start_run():
        second = register_models(
            sft_model, other_policy, sft_model, tokenizer, reward_model, summary("ppo"), *NO_ALARM,
            EVAL_PROMPTS, world_spec(), **PARAMETERS,
        )
    assert not second["promoted"] and second["decision"] == "held"
    assert (second["value"], second["ci_low"], second["ci_high"]) == (0.0, 0.0, 0.0)
    assert second["compared_to"] == "v1" and second["champion_version"] == "1"
    assert second["judge"] == "gold" and second["judge_description"] == GOLD_DESCRIPTION
    assert second["reason"] == (
        "advantage +0.000 [+0.000, +0.000] vs champion v1, gold judge on 8 prompts: "
        "lower end under the margin 0.02 → held"
    )
    assert alias_version(client, POLICY, CHAMPION) == "1" and alias_version(client, POLICY, CANDIDATE) == "2"
    assert alias_version(client, REWARD, CHAMPION) == "1" and alias_version(client, REWARD, CANDIDATE) == "2"
    tags = client.get_model_version(POLICY, "2").tags
    assert tags["promotion.decision"] == "held" and tags["promotion.compared_to"] == "v1"
    assert (tags["promotion.ci_low"], tags["promotion.ci_high"], tags["promotion.margin"]) == (
        "0.0000", "0.0000", "0.0200")
    assert tags["method"] == "ppo" and tags["eval.gold_win_rate_vs_sft"] == "0.7000"
    assert tags["eval.gold_win_rate_vs_sft.ci_low"] == "0.6000"


def test_a_candidate_the_judge_finds_worse_than_the_champion_is_held(
    client, sft_model, other_policy, tokenizer, reward_model
):
    likes_other = fan_of(other_policy, tokenizer)
    assert register(sft_model, other_policy, likes_other, tokenizer, reward_model)["promoted"]
    worse = register(other_policy, sft_model, likes_other, tokenizer, reward_model)
    assert not worse["promoted"] and worse["compared_to"] == "v1"
    assert worse["value"] == -1.0 and worse["ci_high"] == -1.0
    assert (worse["candidate_mean"], worse["baseline_mean"]) == (0.0, 1.0)
    assert alias_version(client, POLICY, CHAMPION) == "1"


def test_a_first_run_worse_than_its_own_sft_is_held(client, sft_model, other_policy, tokenizer, reward_model):
    decision = register(sft_model, other_policy, fan_of(sft_model, tokenizer), tokenizer, reward_model)
    assert not decision["promoted"] and decision["compared_to"] == SFT_BASELINE
    assert decision["value"] == -1.0 and decision["champion_version"] is None
    assert alias_version(client, POLICY, CHAMPION) is None and alias_version(client, REWARD, CHAMPION) is None
    assert alias_version(client, POLICY, CANDIDATE) == "1"
    assert client.get_model_version(POLICY, "1").tags["promotion.compared_to"] == SFT_BASELINE


def test_a_champion_this_code_cannot_load_holds_the_candidate_with_the_reason(
    client, sft_model, other_policy, tokenizer, reward_model
):
    # a champion that is no alignops policy (here a reward model), as one logged in an older format
    with mlflow.start_run():
        info = log_reward_model(reward_model)
    stale = str(mlflow.register_model(info.model_uri, POLICY).version)
    client.set_registered_model_alias(POLICY, CHAMPION, stale)
    decision = register(sft_model, other_policy, fan_of(other_policy, tokenizer), tokenizer, reward_model)
    assert not decision["promoted"] and decision["compared_to"] == f"v{stale}" and decision["ci_low"] is None
    assert decision["reason"].startswith(f"no comparison with champion v{stale}: the champion cannot be loaded (")
    assert alias_version(client, POLICY, CHAMPION) == stale


def test_the_audit_judge_decides_on_user_data_and_sft_never_beats_itself(
    client, sft_model, tokenizer, reward_model
):
    with mlflow.start_run():
        decision = register_models_with_audit_judge(
            sft_model, sft_model, sft_model, tokenizer, reward_model, summary("ppo"), *NO_ALARM, EVAL_PROMPTS,
            reward_model, **{**PARAMETERS, "params": {"policy": "sft", "metric": "score", "margin": 0.0}},
        )
    assert decision["method"] == "sft" and decision["judge"] == "audit" and decision["metric"] == "score"
    assert not decision["promoted"] and (decision["ci_low"], decision["ci_high"]) == (0.0, 0.0)
    assert decision["candidate_mean"] == pytest.approx(decision["baseline_mean"])


@pytest.mark.parametrize(("gold_judge", "judge", "not_judge"), [(True, "gold_judge_spec", "audit_judge"),
                                                                 (False, "audit_judge", "gold_judge_spec")])
def test_the_pipeline_gives_the_node_its_judge_and_the_evaluation_prompts(gold_judge, judge, not_judge):
    pipeline = create_pipeline(gold_judge=gold_judge)
    assert sorted(n.name for n in pipeline.nodes) == ["log_evaluation", "register_models"]
    assert {judge, "eval_prompts", "params:evaluation", "params:registry"} <= pipeline.inputs()
    assert {"frontier", "overoptimisation", "ppo_snapshots"} <= pipeline.inputs()
    assert not_judge not in pipeline.inputs()
    assert pipeline.outputs() == {"tracked_samples", "registry_decision"}


def test_reward_model_tags_keep_intervals_and_counts():
    from alignops.tracking.registration import reward_model_tags

    tags = reward_model_tags({"heldout_pairs": 84, "heldout_accuracy": 1.0, "gold_pairs": None,
                              "panel_accuracy": {"value": 0.44, "ci_low": 0.34, "ci_high": 0.55}})
    assert tags == {"eval.heldout_pairs": "84", "eval.heldout_accuracy": "1.0000", "eval.panel_accuracy": "0.4400",
                    "eval.panel_accuracy.ci_low": "0.3400", "eval.panel_accuracy.ci_high": "0.5500"}


def _audit_summary(low: float, high: float) -> dict:
    audit = {"judge": "audit", "judges": {"audit": "an audit reward model"},
             "audit_judge": {"heldout_pairs": 300, "panel_accuracy": {"value": (low + high) / 2, "ci_low": low,
                                                                      "ci_high": high}}}
    return {**summary("ppo"), **audit}


def test_an_audit_judge_no_better_than_chance_is_no_evidence():
    from alignops.tracking.registry import RegistryConfig, judge_doubt

    assert "does not clear 0.5" in judge_doubt(_audit_summary(0.46, 0.57), RegistryConfig())
    assert judge_doubt(_audit_summary(0.55, 0.65), RegistryConfig()) is None
    assert judge_doubt(_audit_summary(0.46, 0.57), RegistryConfig(min_judge_accuracy=0.0)) is None
    assert judge_doubt(summary("ppo"), RegistryConfig(min_judge_accuracy=0.9)) is None  # gold is the truth


def test_a_run_judged_by_a_chance_level_audit_judge_is_held_without_a_comparison(
    client, sft_model, tokenizer, reward_model
):
    with mlflow.start_run():
        decision = register_models_with_audit_judge(
            sft_model, sft_model, sft_model, tokenizer, reward_model, _audit_summary(0.46, 0.57), *NO_ALARM,
            EVAL_PROMPTS, reward_model, **PARAMETERS,
        )
    assert not decision["promoted"] and decision["decision"] == "held" and decision["value"] is None
    assert "0.515 [0.460, 0.570] does not clear 0.5" in decision["reason"] and "a person decides" in decision["reason"]


def test_when_the_alarm_fired_the_registry_is_offered_the_peak_checkpoint(
    client, sft_model, other_policy, tokenizer, reward_model
):
    from alignops.tracking.models import load_policy

    peak = {"policy": "ppo", "step": 2, "judge": {"value": 1.4, "ci_low": 1.2, "ci_high": 1.6},
            "win_rate_vs_sft": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9},
            "proxy": {"value": 0.6, "ci_low": 0.5, "ci_high": 0.7}, "kl": 0.9, "kl_kind": "estimate",
            "mean_length": 7.0}
    alarm = {**QUIET, "fired": True, "peak_step": 2, "offered_step": 2, "message": "over-optimisation: ..."}
    with mlflow.start_run():
        # the last PPO policy is the SFT model; the peak snapshot is the other policy
        decision = register_models(
            sft_model, sft_model, sft_model, tokenizer, reward_model, summary("ppo"),
            {"judge": "gold", "points": [peak]}, alarm, {"step_000002": lambda: other_policy},
            EVAL_PROMPTS, world_spec(), **PARAMETERS,
        )
    assert decision["method"] == "ppo"
    version = decision["policy_version"]
    tags = client.get_model_version(POLICY, version).tags
    assert tags["ppo_step"] == "2" and tags["overoptimisation.alarm"] == "fired"
    assert tags["eval.gold_win_rate_vs_sft"] == "0.8000" and tags["eval.kl_to_sft"] == "0.9000"
    registered = load_policy(f"models:/{POLICY}/{version}")[0].state_dict()
    assert all(torch.equal(registered[name], tensor) for name, tensor in other_policy.state_dict().items())
