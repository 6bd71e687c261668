"""Evaluation on tiny local models with hand-made judges: the summary, its intervals, best-of-N, RM accuracy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alignops.evaluation import AUDIT, GOLD, EvaluationConfig, Judge, evaluate, reward_model_accuracy
from alignops.evaluation.policies import win_rate
from alignops.evaluation.report import plot_evaluation, samples_table
from alignops.models.generation import GenerationConfig
from tests.helpers import TINY_LLAMA, make_tiny_policy, make_tiny_tokenizer

TEXTS = ["my parcel is late, where is it?", "please reset my password", "thank you, happy to help"] * 20
CONFIG = EvaluationConfig(best_of_n=3, batch_size=4, seed=0)
SAMPLING = GenerationConfig(max_new_tokens=8)
PROMPTS = ["my parcel is late", "reset my password", "where is it", "thank you"]
HELDOUT = pd.DataFrame(
    {"prompt": ["p"] * 4, "chosen": ["aaaa", "bb", "c", "dd"], "rejected": ["a", "bbbb", "cc", "ee"]}
)
POLICY_FIGURES = {"rm_mean", "kl_to_sft", "kl_to_sft_kind", "mean_length", "eos_rate", "n_samples"}


def _length(prompts, responses):
    return np.array([float(len(r)) for r in responses])


def _letter_e(prompts, responses):
    return np.array([float(r.count("e")) for r in responses])


GOLD_JUDGE = Judge(GOLD, "response length, standing in for the world's judge", _length)
AUDIT_JUDGE = Judge(AUDIT, "how many e's, standing in for an audit reward model", _letter_e)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def policies(tokenizer):
    return {"sft": make_tiny_policy(tokenizer, seed=0), "ppo": make_tiny_policy(tokenizer, seed=1)}


def _evaluate(policies, tokenizer, judges, prompts=PROMPTS, config=CONFIG):
    return evaluate(policies, tokenizer, _length, judges, prompts, HELDOUT, TINY_LLAMA, SAMPLING, config)


@pytest.fixture(scope="module")
def world(policies, tokenizer):
    """Both judges, gold deciding: as on the embedded world."""
    return _evaluate(policies, tokenizer, [GOLD_JUDGE, AUDIT_JUDGE])


def _intervals(figures: dict) -> dict[str, dict]:
    return {k: v for k, v in figures.items() if isinstance(v, dict)}


def test_the_summary_has_gold_and_audit_figures_with_both_judges(world):
    summary, _ = world
    assert list(summary) == ["judge", "judges", "interval", "n_prompts", "reward_model", "audit_judge", "policies"]
    assert summary["judge"] == GOLD
    assert summary["judges"] == {GOLD: GOLD_JUDGE.description, AUDIT: AUDIT_JUDGE.description}
    assert summary["interval"] == {"level": 0.95, "method": "paired percentile bootstrap over prompts",
                                   "resamples": 2000}
    assert summary["n_prompts"] == len(PROMPTS)
    assert list(summary["policies"]) == ["sft", "ppo", "best_of_n"]
    for name, figures in summary["policies"].items():
        judged = {f"{j}_{f}" for j in (GOLD, AUDIT) for f in ("mean", "win_rate_vs_sft")}
        assert set(figures) == judged | POLICY_FIGURES | ({"n"} if name == "best_of_n" else set()), name
        assert set(_intervals(figures)) == judged
    # the reward model and the audit judge on held-out pairs, against the panel and against gold
    for block in (summary["reward_model"], summary["audit_judge"]):
        assert set(block) == {"heldout_pairs", "panel_accuracy", "gold_pairs", "heldout_accuracy",
                              "panel_gold_agreement"}
        assert set(block["panel_accuracy"]) == {"value", "ci_low", "ci_high"}
    json.dumps(summary, allow_nan=False)  # what the catalog's JSON dataset writes


def test_without_gold_the_audit_judge_decides_alone(policies, tokenizer):
    summary, samples = _evaluate(policies, tokenizer, [AUDIT_JUDGE])
    assert summary["judge"] == AUDIT and list(summary["judges"]) == [AUDIT]
    for figures in summary["policies"].values():
        assert set(_intervals(figures)) == {"audit_mean", "audit_win_rate_vs_sft"}
    assert set(summary["reward_model"]) == set(summary["audit_judge"]) == {"heldout_pairs", "panel_accuracy"}
    assert "gold" not in samples_table(samples).columns


def test_intervals_contain_the_estimate_and_narrow_with_more_prompts(world, policies, tokenizer):
    summary, _ = world
    for figures in summary["policies"].values():
        for name, interval in _intervals(figures).items():
            assert interval["ci_low"] <= interval["value"] <= interval["ci_high"], name
            assert all(isinstance(x, float) for x in interval.values()), name
    many = [f"{p} {i}" for i in range(8) for p in PROMPTS]  # 32 prompts
    wider, _ = _evaluate(policies, tokenizer, [GOLD_JUDGE])
    narrower, _ = _evaluate(policies, tokenizer, [GOLD_JUDGE], prompts=many)
    for figure in ("gold_mean", "gold_win_rate_vs_sft"):
        width = {
            n: s["policies"]["ppo"][figure]["ci_high"] - s["policies"]["ppo"][figure]["ci_low"]
            for n, s in ((4, wider), (32, narrower))
        }
        assert 0 < width[32] < width[4], figure


def test_a_policy_against_itself_wins_half_with_a_zero_width_interval_and_zero_kl(policies, tokenizer):
    sft = policies["sft"]
    summary, samples = _evaluate({"sft": sft, "same": sft}, tokenizer, [GOLD_JUDGE, AUDIT_JUDGE])
    assert samples["same"].texts == samples["sft"].texts  # same seed, same samples
    for judge in (GOLD, AUDIT):
        for name in ("sft", "same"):
            assert summary["policies"][name][f"{judge}_win_rate_vs_sft"] == {
                "value": 0.5, "ci_low": 0.5, "ci_high": 0.5
            }
    same = summary["policies"]["same"]
    assert same["kl_to_sft"] == pytest.approx(0.0, abs=1e-5) and same["kl_to_sft_kind"] == "estimate"
    assert summary["policies"]["sft"]["kl_to_sft"] == 0.0


def test_a_different_policy_has_positive_kl_and_best_of_n_reports_its_bound(world):
    summary, samples = world
    ppo, best = summary["policies"]["ppo"], summary["policies"]["best_of_n"]
    assert ppo["kl_to_sft"] > 0 and ppo["kl_to_sft_kind"] == "estimate"  # a mean of k1 over its own samples
    assert best["kl_to_sft"] == pytest.approx(np.log(3) - 2 / 3) and best["kl_to_sft_kind"] == "bound"
    assert best["n"] == 3 and best["n_samples"] == len(samples["best_of_n"].texts) == len(PROMPTS)
    # the RM here is response length, so best-of-3 is never shorter than SFT's single sample on average
    assert best["rm_mean"] >= summary["policies"]["sft"]["rm_mean"]
    for name in ("rm_mean", "kl_to_sft", "mean_length", "eos_rate"):
        assert isinstance(ppo[name], float), name


def test_several_samples_per_prompt_resample_prompts_not_samples(policies, tokenizer):
    config = EvaluationConfig(samples_per_prompt=3, best_of_n=2, batch_size=8, seed=0)
    summary, samples = _evaluate(policies, tokenizer, [GOLD_JUDGE], config=config)
    assert summary["n_prompts"] == len(PROMPTS)
    assert summary["policies"]["ppo"]["n_samples"] == summary["policies"]["best_of_n"]["n_samples"] == 12
    gold = samples["ppo"].scores[GOLD]
    assert samples["ppo"].prompts == [p for p in PROMPTS for _ in range(3)]
    assert summary["policies"]["ppo"]["gold_mean"]["value"] == pytest.approx(gold.mean())


def test_the_samples_table_has_a_column_per_judge_and_the_plot_names_the_judge(world):
    summary, samples = world
    table = samples_table(samples)
    assert {"policy", "prompt", "response", GOLD, AUDIT, "rm", "length", "ended_with_eos"} == set(table.columns)
    assert set(table["policy"]) == {"sft", "ppo", "best_of_n"}
    ppo = table[table.policy == "ppo"]
    assert ppo[GOLD].tolist() == samples["ppo"].scores[GOLD].tolist()
    figure = plot_evaluation(summary, table)
    assert len(figure.axes) == 3
    assert "gold judge" in figure.axes[1].get_title() and "95% CI" in figure.axes[1].get_title()
    assert [t.get_text() for t in figure.axes[1].get_legend().get_texts()] == ["gold (decides)", "audit"]


def test_win_rate_counts_ties_half():
    assert win_rate(np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, 0.0])) == pytest.approx(0.5)


def test_reward_model_accuracy_against_panel_with_an_interval_and_against_gold():
    def rm(prompts, responses):  # prefers longer responses
        return np.array([float(len(r)) for r in responses])

    def gold(prompts, responses):  # prefers longer too, but ties on the last pair
        return np.array([float(len(r)) for r in responses])

    result = reward_model_accuracy(HELDOUT, rm, gold)
    accuracy = result["panel_accuracy"]
    assert accuracy["value"] == pytest.approx(0.25)  # RM agrees with the label only on pair 1
    assert 0.0 <= accuracy["ci_low"] <= 0.25 <= accuracy["ci_high"] <= 1.0 and accuracy["ci_high"] > 0.25
    assert result["gold_pairs"] == 3  # pair 4 is a gold tie
    assert result["heldout_accuracy"] == pytest.approx(1.0)
    assert result["panel_gold_agreement"] == pytest.approx(1 / 3)
    assert reward_model_accuracy(HELDOUT.iloc[:0], rm) == {"heldout_pairs": 0, "panel_accuracy": None}


def test_config_rejects_misspelt_keys_and_greedy_temperature():
    with pytest.raises(TypeError):
        EvaluationConfig(temprature=0.7)
    with pytest.raises(TypeError):
        GenerationConfig(temprature=0.7)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0.0)
