"""The over-optimisation alarm on synthetic curves: it fires on a peaked judge curve under a
rising proxy, stays quiet on monotone or noisy ones, and names the peak."""

from __future__ import annotations

import numpy as np
import pytest

from alignops.evaluation.overoptimisation import check

STEPS = [0, 10, 20, 30, 40, 50, 60]
PROMPTS = 300


def _scores(means: list[float], noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """(C, P) per-prompt scores around ``means``: a prompt effect shared by every checkpoint
    (as real prompts are easy or hard for every policy) plus per-checkpoint noise."""
    rng = np.random.default_rng(seed)
    prompt_effect = rng.normal(0.0, 1.0, PROMPTS)
    return np.array([m + prompt_effect + rng.normal(0.0, noise, PROMPTS) for m in means])


PROXY_RISING = _scores([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8], seed=1)


def test_a_peaked_judge_under_a_rising_proxy_fires_and_names_the_peak():
    judge = _scores([0.0, 0.4, 0.7, 0.5, 0.2, 0.0, -0.2])
    verdict = check(STEPS, judge, PROXY_RISING, consecutive=2, seed=0, judge_name="gold")
    assert verdict["fired"]
    assert verdict["peak_step"] == 20 and verdict["offered_step"] == 20 and verdict["last_step"] == 60
    assert [row["step"] for row in verdict["checkpoints"]] == [30, 40, 50, 60]
    last = verdict["checkpoints"][-1]
    assert last["overoptimised"] and last["judge_change"]["ci_high"] < 0 < last["proxy_change"]["ci_low"]
    assert "peaked at PPO step 20" in verdict["message"] and "offered step 20" in verdict["message"]


def test_a_monotone_judge_stays_quiet_and_offers_the_last_checkpoint():
    judge = _scores([0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8])
    verdict = check(STEPS, judge, PROXY_RISING, consecutive=2, seed=0, judge_name="gold")
    assert not verdict["fired"]
    assert verdict["offered_step"] == 60


def test_a_flat_noisy_judge_does_not_fire_by_chance():
    """The peak of equal-mean noisy checkpoints is a winner's-curse maximum; over seeds the
    alarm should (almost) never fire on it."""
    fired = [
        check(STEPS, _scores([0.5] * len(STEPS), seed=s), PROXY_RISING, consecutive=2, seed=s)["fired"]
        for s in range(20)
    ]
    assert sum(fired) <= 1


def test_the_judge_falling_while_the_proxy_falls_too_is_not_over_optimisation():
    judge = _scores([0.0, 0.4, 0.7, 0.5, 0.2, 0.0, -0.2])
    proxy = _scores([0.0, 0.4, 0.7, 0.5, 0.2, 0.0, -0.2], seed=3)  # the policy simply got worse
    verdict = check(STEPS, judge, proxy, consecutive=2, seed=0)
    assert not verdict["fired"]
    assert not any(row["overoptimised"] for row in verdict["checkpoints"])


def test_one_checkpoint_below_the_peak_needs_consecutive_one_to_fire():
    judge = _scores([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 0.6])  # only the last falls
    assert not check(STEPS, judge, PROXY_RISING, consecutive=2, seed=0)["fired"]
    assert check(STEPS, judge, PROXY_RISING, consecutive=1, seed=0)["offered_step"] == 50


def test_shapes_and_steps_are_checked():
    with pytest.raises(ValueError, match="one row of scores per checkpoint"):
        check(STEPS[:-1], PROXY_RISING, PROXY_RISING, consecutive=2, seed=0)
    with pytest.raises(ValueError, match="increase"):
        check(list(reversed(STEPS)), PROXY_RISING, PROXY_RISING, consecutive=2, seed=0)
