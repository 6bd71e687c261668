"""Log-probabilities and entropies from logits, without materialising a second (B, T, V) tensor.

A (B, T, V) logits tensor is the largest thing in a language-model step, so both
functions work through it in row chunks: each chunk is upcast to float32 and
reduced to (rows,) before the next one is touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from alignops.core._dtypes import at_least_float32

# Elements per chunk of logits: 2**24 float32s = 64 MiB of temporaries.
_CHUNK_ELEMENTS = 2**24


def _row_blocks(logits: torch.Tensor, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Walk logits (..., V) and index (...) as (n, V) / (n,) blocks of at most ~_CHUNK_ELEMENTS.

    Splitting along the leading axis before reshaping means a non-contiguous view
    such as ``logits[:, :-1]`` is copied one block at a time, never whole.
    """
    if logits.dim() == 1:  # a single distribution
        yield logits.unsqueeze(0), index.reshape(1)
    elif logits.shape[0] == 0:
        return
    elif logits.dim() == 2 or logits[0].numel() <= _CHUNK_ELEMENTS:
        items_per_block = max(1, _CHUNK_ELEMENTS // max(logits[0].numel(), 1))
        for logits_block, index_block in zip(logits.split(items_per_block), index.split(items_per_block), strict=True):
            yield logits_block.reshape(-1, logits.shape[-1]), index_block.reshape(-1)
    else:
        for logits_item, index_item in zip(logits, index, strict=True):
            yield from _row_blocks(logits_item, index_item)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, -1).gather(-1, index)`` without the (..., V) log-softmax tensor.

    TRL ``selective_log_softmax``: log p(index) = logits[index] - logsumexp(logits).
    ``logits`` (..., V) and integer ``index`` (...) → (...), float32 for bf16/fp16 input.
    """
    pieces = []
    for logits_block, index_block in _row_blocks(logits, index):
        block = at_least_float32(logits_block)  # (n, V)
        chosen = block.gather(-1, index_block.unsqueeze(-1)).squeeze(-1)  # (n,)
        pieces.append(chosen - torch.logsumexp(block, dim=-1))
    if not pieces:  # an empty batch
        return at_least_float32(logits.new_zeros(index.shape))
    return torch.cat(pieces).reshape(index.shape)


logprobs_from_logits = selective_log_softmax


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last axis: (..., V) → (...), float32 for bf16/fp16.

    H = logsumexp(z) - Σ softmax(z)·z, which never takes the log of an underflowed
    probability. Logits must be finite (a ``-inf`` entry gives 0·inf = nan).
    """
    leading_shape = logits.shape[:-1]
    placeholder_index = torch.zeros(leading_shape, dtype=torch.long, device=logits.device)
    pieces = []
    for logits_block, _ in _row_blocks(logits, placeholder_index):
        block = at_least_float32(logits_block)  # (n, V)
        probs = torch.softmax(block, dim=-1)  # (n, V)
        pieces.append(torch.logsumexp(block, dim=-1) - (probs * block).sum(-1))
    if not pieces:
        return at_least_float32(logits.new_zeros(leading_shape))
    return torch.cat(pieces).reshape(leading_shape)


def shifted_token_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token: position t of ``logits`` scores ``labels[:, t + 1]``.

    The Hugging Face causal-LM convention: ``labels`` and ``mask`` are aligned with
    the *input* ids, and the shift happens here. logits (B, T, V), labels (B, T),
    mask (B, T) → (B, T - 1) with 0 where ``mask[:, 1:]`` is 0 (so labels there may be
    ``-100`` or a pad id).
    """
    target_mask = mask[:, 1:].bool()  # (B, T-1)
    targets = torch.where(target_mask, labels[:, 1:], torch.zeros_like(labels[:, 1:]))  # (B, T-1)
    token_logps = selective_log_softmax(logits[:, :-1], targets)  # (B, T-1)
    return torch.where(target_mask, token_logps, torch.zeros_like(token_logps))


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """log π(completion | prompt) per row: the sum (or mean, for IPO) of masked next-token log-probs.

    Same shift convention as ``shifted_token_logprobs``; logits (B, T, V) → (B,).
    ``average=True`` divides by the number of completion tokens (Azar et al. 2023 use averages).
    """
    token_logps = shifted_token_logprobs(logits, labels, mask)  # (B, T-1)
    total = token_logps.sum(-1)  # (B,)
    if average:
        return total / mask[:, 1:].bool().sum(-1).clamp_min(1)
    return total
