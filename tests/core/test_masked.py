"""masked_mean / masked_var / masked_whiten against plain loops over the valid entries."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from alignops.core import masked_mean, masked_var, masked_whiten
from tests.core.inputs import awkward_mask, poison_padding

B, T = 7, 11


def naive_valid_values(x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return [float(x[b, t]) for b in range(x.shape[0]) for t in range(x.shape[1]) if mask[b, t]]


def naive_mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def naive_var(values: list[float], unbiased: bool) -> float:
    mean = naive_mean(values)
    squares = sum((v - mean) ** 2 for v in values)
    n = len(values)
    return squares / (n - 1 if unbiased and n > 1 else n) if n else 0.0


def test_masked_mean_over_everything_matches_a_loop(generator):
    mask = awkward_mask(B, T, generator)
    x = torch.randn(B, T, generator=generator, dtype=torch.float64)
    expected = naive_mean(naive_valid_values(x, mask))
    assert_close(masked_mean(poison_padding(x, mask), mask), torch.tensor(expected, dtype=torch.float64))


def test_masked_mean_along_a_dim_matches_a_loop_and_gives_zero_for_empty_rows(generator):
    mask = awkward_mask(B, T, generator)
    x = torch.randn(B, T, generator=generator, dtype=torch.float64)
    expected = [naive_mean([float(x[b, t]) for t in range(T) if mask[b, t]]) for b in range(B)]
    got = masked_mean(poison_padding(x, mask, float("nan")), mask, dim=1)
    assert_close(got, torch.tensor(expected, dtype=torch.float64))
    assert got[2] == 0  # the all-padding row


def test_masked_mean_accepts_a_float_mask(generator):
    mask = awkward_mask(B, T, generator)
    x = torch.randn(B, T, generator=generator)
    assert_close(masked_mean(x, mask.float()), masked_mean(x, mask))


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_a_loop(generator, unbiased):
    mask = awkward_mask(B, T, generator)
    x = torch.randn(B, T, generator=generator, dtype=torch.float64) * 3 + 1
    expected = naive_var(naive_valid_values(x, mask), unbiased)
    got = masked_var(poison_padding(x, mask), mask, unbiased=unbiased)
    assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_masked_var_of_a_single_valid_value_is_zero_not_nan():
    x = torch.tensor([[5.0, float("inf")]])
    mask = torch.tensor([[1, 0]])
    assert masked_var(x, mask) == 0


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_a_loop(generator, shift_mean):
    mask = awkward_mask(B, T, generator)
    x = torch.randn(B, T, generator=generator, dtype=torch.float64) * 4 - 2
    values = naive_valid_values(x, mask)
    mean, std = naive_mean(values), math.sqrt(naive_var(values, unbiased=True) + 1e-8)
    expected = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                expected[b, t] = (float(x[b, t]) - mean) / std + (0.0 if shift_mean else mean)
    assert_close(masked_whiten(poison_padding(x, mask), mask, shift_mean=shift_mean), expected)


def test_whitened_values_have_mean_zero_and_variance_one_over_the_mask(generator):
    mask = awkward_mask(B, T, generator)
    x = torch.randn(B, T, generator=generator) * 10 + 3
    whitened = masked_whiten(x, mask)
    assert_close(masked_mean(whitened, mask), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert_close(masked_var(whitened, mask), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert (whitened[~mask] == 0).all()


def test_whitening_without_shift_keeps_the_mean(generator):
    mask = awkward_mask(B, T, generator)
    x = torch.randn(B, T, generator=generator) + 5
    assert_close(masked_mean(masked_whiten(x, mask, shift_mean=False), mask), masked_mean(x, mask))
