"""Evaluation on tiny local models with hand-made scorers: win rates, KL, best-of-N, RM accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alignops.evaluation import EvaluationConfig, evaluate_policies, reward_model_accuracy
from alignops.evaluation.policies import win_rate
from alignops.evaluation.report import plot_evaluation, samples_table
from alignops.models.generation import GenerationConfig
from tests.helpers import TINY_LLAMA, make_tiny_policy, make_tiny_tokenizer

TEXTS = ["my parcel is late, where is it?", "please reset my password", "thank you, happy to help"] * 20
CONFIG = EvaluationConfig(best_of_n=3, batch_size=4, seed=0)
SAMPLING = GenerationConfig(max_new_tokens=8)
PROMPTS = ["my parcel is late", "reset my password", "where is it", "thank you"]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer(TEXTS)


def _length_score(prompts, responses):
    return np.array([float(len(r)) for r in responses])


def test_a_policy_against_itself_ties_everywhere_with_zero_kl(tokenizer):
    sft = make_tiny_policy(tokenizer, seed=0)
    summary, samples = evaluate_policies(
        {"sft": sft, "same": sft}, tokenizer, _length_score, _length_score, PROMPTS, TINY_LLAMA, SAMPLING, CONFIG
    )
    assert summary["same"]["gold_win_rate_vs_sft"] == pytest.approx(0.5)  # same seed, same samples
    assert summary["same"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-5)
    assert samples["same"].texts == samples["sft"].texts
    assert set(summary["sft"]) >= {"gold_mean", "gold_win_rate_vs_sft", "rm_mean", "kl_to_sft", "mean_length"}


def test_a_different_policy_has_positive_kl_and_best_of_n_maximises_the_rm(tokenizer):
    summary, samples = evaluate_policies(
        {"sft": make_tiny_policy(tokenizer, seed=0), "other": make_tiny_policy(tokenizer, seed=1)},
        tokenizer,
        _length_score,
        _length_score,
        PROMPTS,
        TINY_LLAMA,
        SAMPLING,
        CONFIG,
    )
    assert summary["other"]["kl_to_sft"] > 0  # a mean of k1 over the policy's own samples
    best = samples["best_of_n"]
    assert len(best.texts) == len(PROMPTS)
    # the RM here is response length, so best-of-3 is never shorter than SFT's single sample on average
    assert summary["best_of_n"]["rm_mean"] >= summary["sft"]["rm_mean"]
    assert summary["best_of_n"]["kl_to_sft"] == pytest.approx(np.log(3) - 2 / 3)

    table = samples_table(samples)
    assert set(table["policy"]) == {"sft", "other", "best_of_n"}
    figure = plot_evaluation({"policies": summary}, table)
    assert len(figure.axes) == 3


def test_win_rate_counts_ties_half():
    assert win_rate(np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, 0.0])) == pytest.approx(0.5)


def test_reward_model_accuracy_against_panel_and_gold():
    heldout = pd.DataFrame(
        {"prompt": ["p"] * 4, "chosen": ["aaaa", "bb", "c", "dd"], "rejected": ["a", "bbbb", "cc", "ee"]}
    )

    def rm(prompts, responses):  # prefers longer responses
        return np.array([float(len(r)) for r in responses])

    def gold(prompts, responses):  # prefers longer too, but ties on the last pair
        return np.array([float(len(r)) for r in responses])

    result = reward_model_accuracy(heldout, rm, gold)
    assert result["panel_accuracy"] == pytest.approx(0.25)  # RM agrees with the label only on pair 1
    assert result["gold_pairs"] == 3  # pair 4 is a gold tie
    assert result["heldout_accuracy"] == pytest.approx(1.0)
    assert result["panel_gold_agreement"] == pytest.approx(1 / 3)


def test_config_rejects_misspelt_keys_and_greedy_temperature():
    with pytest.raises(TypeError):
        EvaluationConfig(temprature=0.7)
    with pytest.raises(TypeError):
        GenerationConfig(temprature=0.7)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0.0)
