"""The promotion gate: pure decisions, then the aliases and tags it leaves in a real registry."""

from __future__ import annotations

import pytest

from alignops.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    RegistryConfig,
    alias_version,
    apply_gate,
    choose_policy,
    data_hash,
    decide,
)

CONFIG = RegistryConfig(margin=0.02, max_kl=5.0)


def figures(win=None, rm=None, kl=1.0):
    return {"gold_win_rate": win, "gold_mean": None, "rm_score": rm, "kl_to_sft": kl, "mean_length": 30.0}


def test_first_candidate_becomes_champion():
    decision = decide(figures(win=0.6), None, None, CONFIG)
    assert decision.promote and decision.metric == "gold_win_rate" and "no champion" in decision.reason


def test_candidate_must_beat_champion_by_the_margin():
    held = decide(figures(win=0.61), figures(win=0.60), "1", CONFIG)
    assert not held.promote
    assert "+0.010" in held.reason and "under the margin 0.02" in held.reason and "v1" in held.reason
    promoted = decide(figures(win=0.63), figures(win=0.60), "1", CONFIG)
    assert promoted.promote and promoted.champion_value == pytest.approx(0.60)
    assert not decide(figures(win=0.50), figures(win=0.60), "1", CONFIG).promote


def test_without_gold_the_gate_uses_reward_score_under_a_kl_bound():
    decision = decide(figures(rm=1.5, kl=2.0), figures(rm=1.0), "3", CONFIG)
    assert decision.metric == "rm_score" and decision.promote
    over = decide(figures(rm=9.0, kl=7.5), figures(rm=1.0), "3", CONFIG)
    assert not over.promote and "KL to SFT 7.500 is over the bound 5.0" in over.reason


def test_a_champion_without_the_metric_is_left_to_a_person():
    decision = decide(figures(win=0.9), figures(win=None), "2", CONFIG)
    assert not decision.promote and "a person decides" in decision.reason


def test_best_policy_is_chosen_on_the_gate_metric():
    summary = {"policies": {
        "sft": {"gold_win_rate_vs_sft": 0.5, "rm_mean": 0.0, "kl_to_sft": 0.0},
        "ppo": {"gold_win_rate_vs_sft": 0.7, "rm_mean": 3.0, "kl_to_sft": 9.0},
        "dpo": {"gold_win_rate_vs_sft": 0.65, "rm_mean": 1.0, "kl_to_sft": 2.0},
    }}
    assert choose_policy(summary, CONFIG) == "ppo"
    # on reward score the KL bound rules PPO out
    assert choose_policy(summary, RegistryConfig(metric="rm_score", max_kl=5.0)) == "dpo"
    assert choose_policy(summary, RegistryConfig(policy="sft")) == "sft"


def test_data_hash_depends_on_every_input_digest_and_nothing_else():
    tags = {"data/raw_preferences/a.jsonl": "1" * 32, "data/sft_demonstrations/b.jsonl": "2" * 32, "env": "x"}
    assert data_hash(tags) == data_hash({**tags, "env": "y"})
    assert data_hash(tags) != data_hash({**tags, "data/raw_preferences/a.jsonl": "3" * 32})
    assert data_hash({"env": "x"}) is None


@pytest.mark.parametrize("bad", [{"policy": "rlhf"}, {"metric": "accuracy"}, {"margin": -0.1}, {"max_kl": 0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="registry"):
        RegistryConfig(**bad)


def test_gate_moves_champion_only_when_beaten_and_tags_why(client):
    name = "alignops-policy"
    client.create_registered_model(name)

    def new_version(win: float) -> str:
        version = str(client.create_model_version(name, source="file:///nowhere", run_id=None).version)
        client.set_model_version_tag(name, version, "eval.gold_win_rate", f"{win:.4f}")
        return version

    v1 = new_version(0.60)
    assert apply_gate(client, name, v1, figures(win=0.60), CONFIG).promote
    v2 = new_version(0.61)
    assert not apply_gate(client, name, v2, figures(win=0.61), CONFIG).promote
    assert alias_version(client, name, CHAMPION) == v1
    assert alias_version(client, name, CANDIDATE) == v2
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "held" and tags["promotion.compared_to"] == f"v{v1}"
    assert "under the margin" in tags["promotion.reason"]

    v3 = new_version(0.70)
    assert apply_gate(client, name, v3, figures(win=0.70), CONFIG).promote
    assert alias_version(client, name, CHAMPION) == v3 == alias_version(client, name, CANDIDATE)
    assert client.get_model_version(name, v3).tags["promotion.decision"] == "promoted"


def test_a_person_overrides_the_gate_and_the_reason_is_kept(client, tracking_uri):
    import subprocess
    import sys

    name = "alignops-policy"
    client.create_registered_model(name)
    v1, v2 = (str(client.create_model_version(name, source="file:///nowhere").version) for _ in range(2))
    client.set_registered_model_alias(name, CHAMPION, v1)
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
