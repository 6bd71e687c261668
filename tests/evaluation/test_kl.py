"""KL(policy ‖ SFT) in evaluation is taken at the sampling temperature, against a naive per-token reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from alignops.evaluation.policies import kl_to_reference
from alignops.models.generation import GenerationConfig, sample_responses
from tests.helpers import TINY_LLAMA, make_tiny_policy, make_tiny_tokenizer

PROMPTS = ["my order is late", "reset my password please", "where is my refund", "thanks"]
TEMPERATURE = 0.7
MODEL = dataclasses.replace(TINY_LLAMA, max_prompt_tokens=40)
"""Prompts kept whole (21 to 32 tokens), so the batch is left-padded."""


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def policies(tokenizer):
    return make_tiny_policy(tokenizer, seed=0), make_tiny_policy(tokenizer, seed=1)


@pytest.fixture(scope="module")
def samples(tokenizer, policies):
    settings = GenerationConfig(temperature=TEMPERATURE, max_new_tokens=10)
    return sample_responses(policies[1], tokenizer, PROMPTS, MODEL, settings, seed=0, batch_size=3)


def naive_kl(policy, reference, samples, temperature: float) -> np.ndarray:
    """Σ_t log softmax(logits_t / T)[token_t] of policy minus reference, one unpadded row and one
    full forward pass per response token: no batching, padding, masks or logits_to_keep."""
    totals = []
    for row in range(len(samples.query_ids)):
        prompt = samples.query_ids[row][samples.query_mask[row].bool()]
        response = samples.response_ids[row][samples.response_mask[row].bool()]
        total = 0.0
        for t in range(len(response)):
            prefix = torch.cat([prompt, response[:t]])[None]  # (1, P + t)
            for model, sign in ((policy, 1.0), (reference, -1.0)):
                with torch.no_grad():
                    logits = model(input_ids=prefix).logits[0, -1].double()  # (V,)
                total += sign * float(torch.log_softmax(logits / temperature, dim=-1)[response[t]])
        totals.append(total)
    return np.array(totals)


def test_kl_at_the_sampling_temperature_matches_a_naive_per_token_reference(policies, samples):
    sft, policy = policies
    assert samples.query_mask.min() == 0  # left padding is exercised
    fast = kl_to_reference(policy, sft, samples, TEMPERATURE, batch_size=3)
    assert fast.shape == (len(PROMPTS),)
    np.testing.assert_allclose(fast, naive_kl(policy, sft, samples, TEMPERATURE), atol=1e-4)
    # the samples were drawn at T = 0.7, so log-probs at T = 1 describe another distribution
    at_one = kl_to_reference(policy, sft, samples, 1.0, batch_size=3)
    np.testing.assert_allclose(at_one, naive_kl(policy, sft, samples, 1.0), atol=1e-4)
    assert np.abs(fast - at_one).max() > 1e-3


def test_kl_of_a_policy_to_itself_is_zero_at_any_temperature(policies, samples):
    for temperature in (TEMPERATURE, 1.0):
        assert np.abs(kl_to_reference(policies[1], policies[1], samples, temperature, batch_size=2)).max() < 1e-6
