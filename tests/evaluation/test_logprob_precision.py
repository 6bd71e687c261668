"""Log-probs at a sampling temperature are taken from float32 logits, whatever the model's dtype."""

from __future__ import annotations

import copy

import torch

from alignops.core import selective_log_softmax
from alignops.evaluation.policies import sampled_logprobs
from alignops.models import generate
from alignops.models.scoring import response_logits


def test_bf16_logits_are_upcast_before_the_temperature_divides_them(sft_model, tokenizer):
    model = copy.deepcopy(sft_model).to(torch.bfloat16)
    samples = generate(model, tokenizer, ["\n\nHuman: Where is my order?\n\nAssistant:"] * 3,
                       max_new_tokens=6, seed=0)
    temperature = 0.7
    got = sampled_logprobs(model, samples, temperature, batch_size=2)

    with torch.no_grad():
        logits = response_logits(model, samples.query_ids, samples.query_mask, samples.response_ids,
                                 samples.response_mask)
    assert logits.dtype == torch.bfloat16
    mask = samples.response_mask.bool()
    upcast_first = torch.where(mask, selective_log_softmax(logits.float() / temperature, samples.response_ids), 0.0)
    divided_in_bf16 = torch.where(mask, selective_log_softmax(logits / temperature, samples.response_ids).float(), 0.0)
    assert got.dtype == torch.float32
    assert torch.allclose(got, upcast_first, atol=1e-6)
    assert not torch.allclose(got, divided_in_bf16, atol=1e-6)  # what the old order gave
