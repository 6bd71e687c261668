"""Response log-probs: padding-invariant and equal to a plain per-sequence forward."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignops.models.scoring import response_logprobs


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def test_left_padded_batch_matches_each_sequence_scored_alone():
    model = _model()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    responses = [[13, 14, 15], [16, 17]]
    width = max(map(len, prompts))
    query_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    query_mask = (query_ids != 0).long()
    response_ids = torch.tensor([r + [0] * (3 - len(r)) for r in responses])
    response_mask = (response_ids != 0).long()

    batched = response_logprobs(model, query_ids, query_mask, response_ids, response_mask, batch_size=2)

    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0], -1)
        alone = torch.stack([logps[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)])
        torch.testing.assert_close(batched[row, : len(response)], alone, rtol=1e-4, atol=1e-5)
        assert (batched[row, len(response):] == 0).all()
