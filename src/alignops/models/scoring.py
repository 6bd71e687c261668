"""Log-probabilities of sampled responses under a causal LM.

PPO (policy and reference), evaluation (KL to SFT) and best-of-N all need the
model's log-probs of tokens it or another policy generated. The prompts are LEFT
padded (see ``generation.generate``), so positions must come from the attention
mask: with the default ``arange`` positions a padded prompt would be read at the
wrong rotary positions and its log-probs would differ from an unpadded one.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch
from transformers import PreTrainedModel

from alignops.core import selective_log_softmax


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting only real tokens, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)


def joined_inputs(
    query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Prompt + response as one forward's ``input_ids``, ``attention_mask`` and ``position_ids``
    (each (B, P + R)), positions from the mask."""
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    return {
        "input_ids": torch.cat([query_ids, response_ids], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
    }


@cache
def keeps_logits(model_class: type) -> bool:
    """Whether ``model_class.forward`` takes ``logits_to_keep`` (most causal LMs in transformers 5)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def response_logits(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """(B, R, V) logits that predict each response token, from one forward pass.

    Only the last R + 1 positions go through the LM head when the model supports
    ``logits_to_keep``: the prompt's logits predict nothing we score, and with a small
    model the head and its (B, T, V) output are a large share of the pass.
    """
    width = response_ids.shape[1]
    keep = {"logits_to_keep": width + 1} if keeps_logits(type(model)) else {}
    logits = model(
        **joined_inputs(query_ids, query_mask, response_ids, response_mask), use_cache=False, **keep
    ).logits  # (B, R + 1, V), or (B, P + R, V)
    return logits[:, -(width + 1) : -1]  # position t predicts token t + 1


@torch.no_grad()
def response_logprobs(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """(B, R) log π(response token | prefix), 0 where ``response_mask`` is 0; no grad."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(query_ids), batch_size):
        rows = slice(start, start + batch_size)
        ids = response_ids[rows].to(device)
        mask = response_mask[rows].to(device)
        logits = response_logits(model, query_ids[rows].to(device), query_mask[rows].to(device), ids, mask)
        chunks.append(torch.where(mask.bool(), selective_log_softmax(logits, ids), 0.0))
    model.train(was_training)
    return torch.cat(chunks)
