"""The paired percentile bootstrap against plain numpy: coverage of the estimate, narrowing, pairing."""

from __future__ import annotations

import numpy as np
import pytest

from alignops.evaluation.statistics import (
    LEVEL,
    METHOD,
    RESAMPLES,
    bootstrap_indices,
    interval_settings,
    mean_interval,
    per_prompt,
    wins,
)


def test_the_interval_is_the_percentiles_of_resampled_means_and_contains_the_mean():
    values = np.random.default_rng(0).normal(size=50)
    indices = bootstrap_indices(50, seed=1)
    interval = mean_interval(values, indices)
    naive = np.array([values[row].mean() for row in indices])  # one resample at a time
    assert interval.value == pytest.approx(values.mean())
    assert interval.low == pytest.approx(np.quantile(naive, 0.025))
    assert interval.high == pytest.approx(np.quantile(naive, 0.975))
    assert interval.low < interval.value < interval.high
    assert interval.as_dict() == {"value": interval.value, "ci_low": interval.low, "ci_high": interval.high}


def test_the_interval_narrows_as_one_over_the_square_root_of_the_prompts():
    rng = np.random.default_rng(0)
    widths = {}
    for n in (25, 400):
        interval = mean_interval(rng.normal(size=n), bootstrap_indices(n, seed=0))
        widths[n] = interval.high - interval.low
    assert widths[400] < widths[25] / 2.5  # sqrt(16) = 4, with room for sampling noise


def test_shared_indices_pair_figures_a_difference_is_narrower_than_two_intervals():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=200)  # a hard prompt is hard for both policies
    a, b = difficulty + 0.1 * rng.normal(size=200), difficulty + 0.1 * rng.normal(size=200) + 0.05
    indices = bootstrap_indices(200, seed=0)
    difference = mean_interval(b - a, indices)
    alone = mean_interval(b, indices)
    assert difference.high - difference.low < (alone.high - alone.low) / 5
    same = mean_interval(wins(a, a), indices)
    assert (same.value, same.low, same.high) == (0.5, 0.5, 0.5)


def test_per_prompt_means_prompt_major_samples_and_wins_count_ties_half():
    np.testing.assert_allclose(per_prompt(np.array([1.0, 3.0, 0.0, 1.0]), 2), [2.0, 0.5])
    np.testing.assert_allclose(wins(np.array([2.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0])), [1.0, 0.5, 0.0])
    assert interval_settings() == {"level": LEVEL, "method": METHOD, "resamples": RESAMPLES}
    with pytest.raises(ValueError, match="at least one prompt"):
        bootstrap_indices(0)
    with pytest.raises(ValueError, match="resample 3 prompts"):
        mean_interval(np.zeros(2), bootstrap_indices(3))
