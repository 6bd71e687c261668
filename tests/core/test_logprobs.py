"""Log-probs and entropies against log_softmax + gather and against the math module."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

import alignops.core.logprobs as logprobs_module
from alignops.core import (
    entropy_from_logits,
    logprobs_from_logits,
    selective_log_softmax,
    sequence_logprobs,
    shifted_token_logprobs,
)
from tests.core.inputs import awkward_mask

B, T, V = 5, 7, 13


def naive_log_softmax_at(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(z) for z in row))


def naive_entropy(row: list[float]) -> float:
    normaliser = sum(math.exp(z) for z in row)
    probs = [math.exp(z) / normaliser for z in row]
    return -sum(p * math.log(p) for p in probs)


def test_selective_log_softmax_matches_log_softmax_gather(generator):
    logits = torch.randn(B, T, V, generator=generator) * 5
    index = torch.randint(V, (B, T), generator=generator)
    expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert_close(selective_log_softmax(logits, index), expected)
    assert logprobs_from_logits is selective_log_softmax


def test_selective_log_softmax_matches_the_math_module(generator):
    logits = torch.randn(B, T, V, generator=generator, dtype=torch.float64)
    index = torch.randint(V, (B, T), generator=generator)
    expected = torch.tensor(
        [[naive_log_softmax_at(logits[b, t].tolist(), int(index[b, t])) for t in range(T)] for b in range(B)],
        dtype=torch.float64,
    )
    assert_close(selective_log_softmax(logits, index), expected)


@pytest.mark.parametrize("chunk_elements", [1, V, 3 * V, T * V + 1, 10**9])
def test_chunking_does_not_change_the_answer_even_on_a_non_contiguous_view(generator, monkeypatch, chunk_elements):
    monkeypatch.setattr(logprobs_module, "_CHUNK_ELEMENTS", chunk_elements)
    logits = torch.randn(B, T + 1, V, generator=generator)[:, :-1]  # non-contiguous, as the shift makes it
    index = torch.randint(V, (B, T), generator=generator)
    expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert_close(selective_log_softmax(logits, index), expected)
    assert_close(entropy_from_logits(logits), -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1))


def test_selective_log_softmax_handles_1d_and_empty_inputs(generator):
    logits = torch.randn(V, generator=generator)
    assert_close(selective_log_softmax(logits, torch.tensor(3)), torch.log_softmax(logits, -1)[3])
    assert selective_log_softmax(torch.zeros(0, T, V), torch.zeros(0, T, dtype=torch.long)).shape == (0, T)


def test_bf16_logits_are_upcast_and_give_float32_log_probs(generator):
    logits = (torch.randn(B, T, V, generator=generator) * 3).bfloat16()
    index = torch.randint(V, (B, T), generator=generator)
    expected = torch.log_softmax(logits.float(), -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    got = selective_log_softmax(logits, index)
    assert got.dtype == torch.float32
    assert_close(got, expected)
    assert entropy_from_logits(logits).dtype == torch.float32


def test_selective_log_softmax_is_stable_for_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4]])
    assert_close(selective_log_softmax(logits, torch.tensor([0])), torch.tensor([0.0]))
    assert torch.isfinite(selective_log_softmax(logits, torch.tensor([2]))).all()


def test_selective_log_softmax_passes_gradients(generator):
    logits = torch.randn(B, T, V, generator=generator, requires_grad=True)
    index = torch.randint(V, (B, T), generator=generator)
    selective_log_softmax(logits, index).sum().backward()
    reference = logits.detach().clone().requires_grad_(True)
    torch.log_softmax(reference, -1).gather(-1, index.unsqueeze(-1)).sum().backward()
    assert_close(logits.grad, reference.grad)


def test_entropy_matches_the_math_module(generator):
    logits = torch.randn(B, T, V, generator=generator, dtype=torch.float64) * 2
    expected = torch.tensor(
        [[naive_entropy(logits[b, t].tolist()) for t in range(T)] for b in range(B)], dtype=torch.float64
    )
    assert_close(entropy_from_logits(logits), expected)


def test_entropy_of_uniform_logits_is_log_vocab():
    logits = torch.full((B, T, V), 3.7)
    assert_close(entropy_from_logits(logits), torch.full((B, T), math.log(V)))


def test_entropy_of_a_near_one_hot_is_zero_and_finite():
    logits = torch.tensor([[[1e4, 0.0, -1e4]]])
    entropy = entropy_from_logits(logits)
    assert torch.isfinite(entropy).all()
    assert_close(entropy, torch.zeros(1, 1), atol=1e-6, rtol=0)


def test_shifted_token_logprobs_score_the_next_token_and_ignore_masked_labels(generator):
    logits = torch.randn(B, T, V, generator=generator, dtype=torch.float64)
    mask = awkward_mask(B, T, generator)
    labels = torch.randint(V, (B, T), generator=generator)
    labels = torch.where(mask, labels, torch.full_like(labels, -100))  # HF's ignore index off the mask
    expected = torch.zeros(B, T - 1, dtype=torch.float64)
    for b in range(B):
        for t in range(T - 1):
            if mask[b, t + 1]:
                expected[b, t] = naive_log_softmax_at(logits[b, t].tolist(), int(labels[b, t + 1]))
    assert_close(shifted_token_logprobs(logits, labels, mask), expected)
    assert_close(sequence_logprobs(logits, labels, mask), expected.sum(-1))
    n_targets = mask[:, 1:].sum(-1).clamp_min(1)
    assert_close(sequence_logprobs(logits, labels, mask, average=True), expected.sum(-1) / n_targets)
