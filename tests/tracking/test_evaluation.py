"""The run's evaluation as MLflow sees it: metric names and the sample generations table."""

from __future__ import annotations

import math

import pandas as pd

from alignops.tracking.evaluation import SAMPLE_COLUMNS, evaluation_metrics, final_steps, samples_table


def test_every_number_of_the_summary_is_a_namespaced_metric():
    summary = {
        "policies": {"ppo": {"gold_win_rate_vs_sft": 0.6, "n": 64, "label": "ppo", "greedy": True}},
        "reward_model": {"heldout_accuracy": 0.75, "note": None},
    }
    assert evaluation_metrics(summary) == {
        "evaluation/ppo/gold_win_rate_vs_sft": 0.6,
        "evaluation/ppo/n": 64.0,
        "evaluation/reward_model/heldout_accuracy": 0.75,
    }


def test_samples_carry_the_step_their_policy_was_trained_to():
    steps = final_steps({"sft": [{"step": 5}, {"step": 10}], "ppo": [{"step": 3}], "dpo": []})
    assert steps == {"sft": 10, "ppo": 3, "dpo": 0}
    rollouts = pd.DataFrame({"step": [1, 2], "prompt": ["a", "b"], "response": ["x", "y"], "score": [0.1, 0.2]})
    evaluated = pd.DataFrame({
        "policy": ["sft", "ppo", "best_of_n"], "prompt": ["a", "b", "c"], "response": ["x", "y", "z"],
        "rm": [0.3, 0.4, 0.5], "gold": [1.0, 0.0, 1.0],
    })
    table = samples_table(evaluated, rollouts, steps)
    assert list(table.columns) == SAMPLE_COLUMNS
    assert table["source"].tolist() == ["ppo_rollout"] * 2 + ["evaluation"] * 3
    # rollouts keep their own step; an evaluated policy is at its stage's last step, best-of-N at SFT's
    assert table["step"].tolist() == [1, 2, 10, 3, 10]
    assert table["reward_model_score"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(math.isnan(s) for s in table["gold_score"][:2]) and table["gold_score"][2:].tolist() == [1.0, 0.0, 1.0]
