"""The gate's head-to-head on tiny policies: identical policies tie exactly, a judge's clear
preference shows as an interval away from zero, and each side samples with its own settings."""

from __future__ import annotations

import numpy as np
import pytest

from alignops.evaluation.comparison import Contender, advantage, compare, score_difference
from alignops.evaluation.judges import Judge
from alignops.models.generation import GenerationConfig, sample_responses
from tests.helpers import TINY_LLAMA, make_tiny_policy

PROMPTS = ["where is my order", "reset my password please", "refund my charge", "close my account",
           "help with the order", "my password is where", "thanks for the refund", "no charge please"]
SETTINGS = GenerationConfig(max_new_tokens=8)
SAMPLING = {"seed": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def ours(sft_model, tokenizer) -> Contender:
    return Contender(sft_model, tokenizer, TINY_LLAMA, SETTINGS)


@pytest.fixture(scope="module")
def theirs(tokenizer) -> Contender:
    return Contender(make_tiny_policy(tokenizer, seed=1), tokenizer, TINY_LLAMA, SETTINGS)


def length_judge(prompts: list[str], responses: list[str]) -> np.ndarray:
    return np.array([float(len(r)) for r in responses])


def fan_of(contender: Contender, samples_per_prompt: int = 1) -> Judge:
    """A judge that likes exactly the replies ``contender`` gives under the gate's sampling."""
    asked = [p for p in PROMPTS for _ in range(samples_per_prompt)]
    texts = sample_responses(contender.model, contender.tokenizer, asked, contender.model_config,
                             contender.generation, **SAMPLING).texts
    liked = set(zip(asked, texts, strict=True))

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([float(pair in liked) for pair in zip(prompts, responses, strict=True)])

    return Judge("fan", "likes one policy's replies and nothing else", score)


def test_the_statistics_are_signs_and_differences():
    candidate, baseline = np.array([2.0, 1.0, 1.0]), np.array([1.0, 1.0, 3.0])
    assert advantage(candidate, baseline).tolist() == [1.0, 0.0, -1.0]
    assert score_difference(candidate, baseline).tolist() == [1.0, 0.0, -2.0]


@pytest.mark.parametrize("metric", ["advantage", "score"])
def test_a_policy_against_itself_ties_exactly(ours, metric):
    result = compare(ours, ours, PROMPTS, Judge("length", "longer is better", length_judge), metric, **SAMPLING)
    assert (result.difference.value, result.difference.low, result.difference.high) == (0.0, 0.0, 0.0)
    assert result.candidate_mean == result.baseline_mean and result.n_prompts == len(PROMPTS)


def test_a_judge_that_prefers_the_candidate_everywhere_gives_an_interval_at_one(ours, theirs):
    result = compare(theirs, ours, PROMPTS, fan_of(theirs), **SAMPLING)
    assert (result.difference.value, result.difference.low, result.difference.high) == (1.0, 1.0, 1.0)
    assert (result.candidate_mean, result.baseline_mean) == (1.0, 0.0)
    assert (result.metric, result.judge, result.judge_description) == (
        "advantage", "fan", "likes one policy's replies and nothing else")
    worse = compare(theirs, ours, PROMPTS, fan_of(ours), **SAMPLING)
    assert (worse.difference.value, worse.difference.high) == (-1.0, -1.0)


def test_a_mixed_verdict_gives_an_interval_across_its_mean(ours, theirs):
    # the judge likes ours on the first half of the prompts and theirs on the rest
    half = set(PROMPTS[: len(PROMPTS) // 2])
    like_ours, like_theirs = fan_of(ours), fan_of(theirs)

    def split(prompts, responses):
        first = np.array([p in half for p in prompts])
        return np.where(first, like_ours.score(prompts, responses), like_theirs.score(prompts, responses))

    result = compare(theirs, ours, PROMPTS, Judge("split", "half and half", split), **SAMPLING)
    assert result.difference.value == 0.0 and result.difference.low < 0.0 < result.difference.high


def test_each_side_samples_with_its_own_generation_settings(ours):
    # same weights and seed: the shorter limit gives prefixes of the longer one's replies
    short = Contender(ours.model, ours.tokenizer, ours.model_config, GenerationConfig(max_new_tokens=2))
    judge = Judge("length", "longer is better", length_judge)
    result = compare(short, ours, PROMPTS, judge, "score", **SAMPLING)
    assert result.candidate_mean < result.baseline_mean
    assert result.difference.value == pytest.approx(result.candidate_mean - result.baseline_mean)
    assert result.difference.high <= 0.0
    assert compare(short, ours, PROMPTS, judge, **SAMPLING).difference.value < 0.0


def test_several_samples_per_prompt_are_averaged_and_prompts_resampled(ours, theirs):
    result = compare(theirs, ours, PROMPTS, fan_of(theirs, 2), samples_per_prompt=2, **SAMPLING)
    assert result.n_prompts == len(PROMPTS) and result.difference.low == 1.0


def test_an_unknown_metric_fails_loudly(ours):
    with pytest.raises(ValueError, match="metric"):
        compare(ours, ours, PROMPTS, Judge("length", "", length_judge), "rm_score", **SAMPLING)
