"""The promotion gate: pure decisions on an interval, then the aliases and tags it leaves in a real registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignops.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    SFT_BASELINE,
    Evidence,
    NoEvidence,
    RegistryConfig,
    alias_version,
    apply_gate,
    choose_policy,
    compared_to,
    data_hash,
    decide,
    held_without_evidence,
    policy_figures,
)

CONFIG = RegistryConfig(margin=0.02)


def evidence(value: float, low: float, high: float, metric: str = "advantage") -> Evidence:
    return Evidence(metric, value, low, high, 300, "gold", "the embedded world's gold judge", 1.2, 1.1)


def test_promotes_only_when_the_lower_end_clears_the_margin():
    assert decide(evidence(0.30, 0.21, 0.39), 0.02, "v1").promote
    # a clear point estimate is not enough: the interval still reaches below the margin
    assert not decide(evidence(0.10, 0.01, 0.19), 0.02, "v1").promote
    assert not decide(evidence(-0.20, -0.30, -0.10), 0.02, "v1").promote


def test_the_lower_end_must_be_strictly_above_the_margin():
    assert not decide(evidence(0.05, 0.02, 0.08), 0.02, "v1").promote
    # identical policies give [0, 0]: even a zero margin does not move the alias
    assert not decide(evidence(0.0, 0.0, 0.0), 0.0, "v1").promote
    assert decide(evidence(0.01, 0.001, 0.02), 0.0, "v1").promote


def test_the_reason_states_the_interval_the_baseline_and_the_outcome():
    held = decide(evidence(0.004, -0.03, 0.04), 0.02, "v1")
    assert held.reason == (
        "advantage +0.004 [-0.030, +0.040] vs champion v1, gold judge on 300 prompts: "
        "lower end under the margin 0.02 → held"
    )
    first = decide(evidence(0.4, 0.3, 0.5, metric="score"), 0.02, SFT_BASELINE)
    assert first.promote and "vs this run's SFT policy (no champion yet)" in first.reason
    assert first.reason.startswith("score +0.400 [+0.300, +0.500]") and first.reason.endswith("→ promoted")


def test_the_decision_dict_carries_the_evidence():
    decision = decide(evidence(0.004, -0.03, 0.04), 0.02, "v1").as_dict()
    assert decision == {
        "decision": "held",
        "reason": decision["reason"],
        "metric": "advantage",
        "value": 0.004,
        "ci_low": -0.03,
        "ci_high": 0.04,
        "margin": 0.02,
        "n_prompts": 300,
        "judge": "gold",
        "judge_description": "the embedded world's gold judge",
        "compared_to": "v1",
        "candidate_mean": 1.2,
        "baseline_mean": 1.1,
    }


def summary(judge: str = "gold", **win_rates: float) -> dict:
    def interval(value: float) -> dict:
        return {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05}

    return {
        "judge": judge,
        "judges": {judge: "a judge"},
        "policies": {
            method: {
                f"{judge}_win_rate_vs_sft": interval(rate),
                f"{judge}_mean": interval(1.0),
                "rm_mean": 3.0 if method == "ppo" else 0.5,
                "kl_to_sft": 0.0 if method == "sft" else 2.0,
                "mean_length": 30.0,
            }
            for method, rate in win_rates.items()
        },
        "reward_model": {},
    }


def test_best_policy_is_the_judges_highest_win_rate_against_sft_not_the_reward_models():
    # PPO has the highest reward-model score; the judge prefers DPO
    assert choose_policy(summary(sft=0.5, ppo=0.55, dpo=0.65), CONFIG) == "dpo"
    assert choose_policy(summary("audit", sft=0.5, ppo=0.7, dpo=0.65), CONFIG) == "ppo"
    # nothing beats SFT: SFT is registered (and the gate will hold it against itself)
    assert choose_policy(summary(sft=0.5, ppo=0.4, dpo=0.5), CONFIG) == "sft"
    assert choose_policy(summary(sft=0.5, ppo=0.7, dpo=0.65), RegistryConfig(policy="sft")) == "sft"


def test_policy_figures_are_flat_and_named_as_in_the_summary():
    figures = policy_figures(summary("audit", sft=0.5, ppo=0.7), "ppo")
    assert figures == {
        "audit_win_rate_vs_sft": 0.7,
        "audit_win_rate_vs_sft.ci_low": pytest.approx(0.65),
        "audit_win_rate_vs_sft.ci_high": pytest.approx(0.75),
        "audit_mean": 1.0,
        "audit_mean.ci_low": pytest.approx(0.95),
        "audit_mean.ci_high": pytest.approx(1.05),
        "rm_mean": 3.0,
        "kl_to_sft": 2.0,
        "mean_length": 30.0,
    }


def test_data_hash_depends_on_every_input_digest_and_nothing_else():
    tags = {"data/raw_preferences/a.jsonl": "1" * 32, "data/sft_demonstrations/b.jsonl": "2" * 32, "env": "x"}
    assert data_hash(tags) == data_hash({**tags, "env": "y"})
    assert data_hash(tags) != data_hash({**tags, "data/raw_preferences/a.jsonl": "3" * 32})
    assert data_hash({"env": "x"}) is None


@pytest.mark.parametrize("bad", [{"policy": "rlhf"}, {"metric": "rm_score"}, {"metric": "win_rate"}, {"margin": -0.1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="registry"):
        RegistryConfig(**bad)


def gate(client, name: str, version: str, found: Evidence, champion: str | None):
    return apply_gate(client, name, version, decide(found, CONFIG.margin, compared_to(champion)), champion)


def test_gate_moves_champion_only_on_evidence_and_tags_why(client):
    name = "alignops-policy"
    client.create_registered_model(name)

    def new_version() -> str:
        return str(client.create_model_version(name, source="file:///nowhere", run_id=None).version)

    v1 = new_version()
    assert gate(client, name, v1, evidence(0.3, 0.2, 0.4), None).promote
    assert client.get_model_version(name, v1).tags["promotion.compared_to"] == SFT_BASELINE
    v2 = new_version()
    assert not gate(client, name, v2, evidence(0.004, -0.03, 0.04), v1).promote
    assert alias_version(client, name, CHAMPION) == v1
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "held" and tags["promotion.compared_to"] == f"v{v1}"
    assert (tags["promotion.ci_low"], tags["promotion.ci_high"], tags["promotion.margin"]) == (
        "-0.0300", "0.0400", "0.0200")
    assert tags["promotion.judge"] == "gold" and tags["promotion.n_prompts"] == "300"
    assert "lower end under the margin 0.02" in tags["promotion.reason"]

    v3 = new_version()
    assert gate(client, name, v3, evidence(0.3, 0.2, 0.4), v1).promote
    assert alias_version(client, name, CHAMPION) == v3
    assert client.get_model_version(name, v3).tags["promotion.decision"] == "promoted"


def test_evidence_against_a_champion_that_moved_meanwhile_is_not_acted_on(client):
    name = "alignops-policy"
    client.create_registered_model(name)
    v1, v2, v3 = (str(client.create_model_version(name, source="file:///nowhere").version) for _ in range(3))
    client.set_registered_model_alias(name, CHAMPION, v1)
    client.set_registered_model_alias(name, CHAMPION, v2)  # another run, while v3 was judged against v1
    assert not gate(client, name, v3, evidence(0.3, 0.2, 0.4), v1).promote
    assert alias_version(client, name, CHAMPION) == v2
    assert f"champion moved to v{v2}" in client.get_model_version(name, v3).tags["promotion.reason"]


def test_without_a_comparison_the_candidate_is_held_and_nothing_unmeasured_is_tagged(client):
    name = "alignops-policy"
    client.create_registered_model(name)
    v1, v2 = (str(client.create_model_version(name, source="file:///nowhere").version) for _ in range(2))
    client.set_registered_model_alias(name, CHAMPION, v1)
    decision = held_without_evidence(NoEvidence("the champion cannot be loaded"), 0.02, compared_to(v1))
    assert decision.as_dict()["ci_low"] is None and decision.as_dict()["compared_to"] == f"v{v1}"
    assert not apply_gate(client, name, v2, decision, v1).promote
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.reason"] == (
        f"no comparison with champion v{v1}: the champion cannot be loaded → held; a person decides")
    assert "promotion.ci_low" not in tags and tags["promotion.decision"] == "held"


def test_a_person_overrides_the_gate_and_the_reason_is_kept(client, tracking_uri):
    name = "alignops-policy"
    client.create_registered_model(name)
    v1, v2 = (str(client.create_model_version(name, source="file:///nowhere").version) for _ in range(2))
    client.set_registered_model_alias(name, CHAMPION, v1)
    client.set_registered_model_alias(name, CANDIDATE, v2)
    result = subprocess.run(
        [sys.executable, "-m", "alignops.tracking.promote", v2, "--reason", "passed the human audit",
         "--registry-uri", tracking_uri],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert alias_version(client, name, CHAMPION) == v2
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "overridden" and tags["promotion.replaced"] == f"v{v1}"
    assert tags["promotion.override_reason"] == "passed the human audit"
