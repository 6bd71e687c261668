"""The run's evaluation as MLflow sees it: metric and tag names, and the sample generations table."""

from __future__ import annotations

import math

import pandas as pd

from alignops.tracking.evaluation import (
    SAMPLE_COLUMNS,
    evaluation_metrics,
    evaluation_tags,
    final_steps,
    log_evaluation_to_run,
    samples_table,
)


def _interval(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci_low": low, "ci_high": high}


SUMMARY = {
    "judge": "gold",
    "judges": {"gold": "the world's judge", "audit": "an audit reward model"},
    "interval": {"level": 0.95, "method": "paired percentile bootstrap over prompts", "resamples": 2000},
    "n_prompts": 64,
    "reward_model": {"heldout_pairs": 40, "panel_accuracy": _interval(0.7, 0.55, 0.85), "gold_pairs": 38,
                     "heldout_accuracy": 0.75, "panel_gold_agreement": None},
    "audit_judge": {"heldout_pairs": 40, "panel_accuracy": _interval(0.65, 0.5, 0.8)},
    "policies": {
        "ppo": {"gold_win_rate_vs_sft": _interval(0.6, 0.52, 0.68), "audit_mean": _interval(0.3, 0.1, 0.5),
                "rm_mean": 1.5, "kl_to_sft": 2.0, "kl_to_sft_kind": "estimate", "n_samples": 64, "greedy": True},
        "best_of_n": {"gold_mean": _interval(-1.0, -1.5, -0.5), "kl_to_sft": 0.64, "kl_to_sft_kind": "bound"},
    },
}


def test_every_number_of_the_summary_is_a_namespaced_metric_with_its_interval_beside_it():
    assert evaluation_metrics(SUMMARY) == {
        "evaluation/interval/level": 0.95,
        "evaluation/interval/resamples": 2000.0,
        "evaluation/n_prompts": 64.0,
        "evaluation/reward_model/heldout_pairs": 40.0,
        "evaluation/reward_model/panel_accuracy": 0.7,
        "evaluation/reward_model/panel_accuracy.ci_low": 0.55,
        "evaluation/reward_model/panel_accuracy.ci_high": 0.85,
        "evaluation/reward_model/gold_pairs": 38.0,
        "evaluation/reward_model/heldout_accuracy": 0.75,
        "evaluation/audit_judge/heldout_pairs": 40.0,
        "evaluation/audit_judge/panel_accuracy": 0.65,
        "evaluation/audit_judge/panel_accuracy.ci_low": 0.5,
        "evaluation/audit_judge/panel_accuracy.ci_high": 0.8,
        "evaluation/ppo/gold_win_rate_vs_sft": 0.6,
        "evaluation/ppo/gold_win_rate_vs_sft.ci_low": 0.52,
        "evaluation/ppo/gold_win_rate_vs_sft.ci_high": 0.68,
        "evaluation/ppo/audit_mean": 0.3,
        "evaluation/ppo/audit_mean.ci_low": 0.1,
        "evaluation/ppo/audit_mean.ci_high": 0.5,
        "evaluation/ppo/rm_mean": 1.5,
        "evaluation/ppo/kl_to_sft": 2.0,
        "evaluation/ppo/n_samples": 64.0,
        "evaluation/best_of_n/gold_mean": -1.0,
        "evaluation/best_of_n/gold_mean.ci_low": -1.5,
        "evaluation/best_of_n/gold_mean.ci_high": -0.5,
        "evaluation/best_of_n/kl_to_sft": 0.64,
    }
    assert evaluation_tags(SUMMARY) == {
        "evaluation/judge": "gold",
        "evaluation/judges/gold": "the world's judge",
        "evaluation/judges/audit": "an audit reward model",
        "evaluation/interval/method": "paired percentile bootstrap over prompts",
        "evaluation/ppo/kl_to_sft_kind": "estimate",
        "evaluation/best_of_n/kl_to_sft_kind": "bound",
    }


def test_a_real_store_takes_every_metric_and_tag_name(client):
    run_id = client.create_run(client.get_experiment_by_name("alignops-test").experiment_id).info.run_id
    samples = pd.DataFrame({"policy": ["sft"], "prompt": ["a"], "response": ["x"]})
    log_evaluation_to_run(client, run_id, SUMMARY, samples)
    data = client.get_run(run_id).data
    assert data.metrics == evaluation_metrics(SUMMARY)
    assert evaluation_tags(SUMMARY).items() <= data.tags.items()


def test_samples_carry_the_step_their_policy_was_trained_to():
    steps = final_steps({"sft": [{"step": 5}, {"step": 10}], "ppo": [{"step": 3}], "dpo": []})
    assert steps == {"sft": 10, "ppo": 3, "dpo": 0}
    rollouts = pd.DataFrame({"step": [1, 2], "prompt": ["a", "b"], "response": ["x", "y"], "score": [0.1, 0.2]})
    evaluated = pd.DataFrame({
        "policy": ["sft", "ppo", "best_of_n"], "prompt": ["a", "b", "c"], "response": ["x", "y", "z"],
        "rm": [0.3, 0.4, 0.5], "gold": [1.0, 0.0, 1.0], "audit": [0.1, 0.2, 0.3],
    })
    table = samples_table(evaluated, rollouts, steps)
    assert list(table.columns) == SAMPLE_COLUMNS
    assert table["source"].tolist() == ["ppo_rollout"] * 2 + ["evaluation"] * 3
    # rollouts keep their own step; an evaluated policy is at its stage's last step, best-of-N at SFT's
    assert table["step"].tolist() == [1, 2, 10, 3, 10]
    assert table["reward_model_score"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(math.isnan(s) for s in table["gold_score"][:2]) and table["gold_score"][2:].tolist() == [1.0, 0.0, 1.0]
    assert table["audit_score"][2:].tolist() == [0.1, 0.2, 0.3]


def test_without_a_gold_judge_the_gold_column_is_empty():
    rollouts = pd.DataFrame({"step": [1], "prompt": ["a"], "response": ["x"], "score": [0.1]})
    evaluated = pd.DataFrame({"policy": ["sft"], "prompt": ["a"], "response": ["x"], "rm": [0.3], "audit": [0.7]})
    table = samples_table(evaluated, rollouts, {"sft": 4})
    assert list(table.columns) == SAMPLE_COLUMNS
    assert table["gold_score"].isna().all() and table["audit_score"].tolist()[1:] == [0.7]
