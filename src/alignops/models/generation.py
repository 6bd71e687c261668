"""Batched sampling from a causal LM: left-padded prompts, KV cache, stop at EOS.

PPO rollouts, best-of-N and evaluation all sample through ``generate``; its output
carries the token ids and masks they need to score the samples, not only the text.

The decode loop is our own rather than ``model.generate``: profiling a rollout on CPU
showed ``torch.multinomial`` (an exponential draw for every vocabulary entry of
every row, every step) taking a quarter of the time. ``sample_tokens`` draws one
uniform number per row and inverts the CDF instead, and the loop skips generate's
per-step logits processors and stopping-criteria machinery. The checkpoint's own
``generation_config`` is not consulted: every sampling setting is explicit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.chat import Renderer
from alignops.models.config import ModelConfig
from alignops.models.scoring import keeps_logits


@dataclass(frozen=True)
class GenerationConfig:
    """How every policy samples: PPO's rollouts, reward normalisation, evaluation, best-of-N,
    the gate's comparison with the champion and the registered model's defaults.

    One source (``conf/base/parameters_generation.yml``, key ``generation``): the reward
    model is normalised on the distribution PPO starts from, evaluation judges the
    distribution PPO optimised, and the served model samples as it was evaluated. A
    stage that departs from it on purpose says so in its own config (PPO's shorter
    rollouts, ``PPOConfig.max_new_tokens``).
    """

    temperature: float = 0.7
    """Sampling temperature. Below 1 trims the tiny model's long tail of misspelt slots
    without collapsing the policy to one reply; log-probs for PPO's ratio and every KL
    are taken at this temperature, so they describe the distribution actually sampled."""
    top_k: int = 0
    """Top-k sampling (0 = off). Log-probs ignore the truncation, so keep it off for exact
    ratios and KLs."""
    top_p: float = 1.0
    """Nucleus sampling (1 = off); same caveat as ``top_k``."""
    max_new_tokens: int = 160
    """Longest response in evaluation and serving; the world's replies need at most ~130
    tokens. PPO rollouts set their own, shorter limit."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"generation.temperature must be > 0 (greedy is a decode mode, not a setting), got {self.temperature}"
            )
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"generation.top_k must be >= 0 and top_p in (0, 1], got {self.top_k}, {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def sampling_kwargs(self) -> dict[str, Any]:
        """The settings as ``generate`` takes them (and as the served model's defaults)."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


@dataclass(frozen=True)
class GenerationOutput:
    """Prompts and their sampled continuations, row i answering ``prompts[i]``."""

    query_ids: torch.Tensor
    """(N, P) prompt tokens, LEFT-padded with the pad id."""
    query_mask: torch.Tensor
    """(N, P) 1 on prompt tokens, 0 on padding."""
    response_ids: torch.Tensor
    """(N, R) generated tokens, RIGHT-padded with the pad id after EOS."""
    response_mask: torch.Tensor
    """(N, R) 1 on generated tokens up to and including the first EOS."""
    texts: list[str]
    """Decoded responses without special tokens (and without ``response_prefix``)."""
    ended_with_eos: torch.Tensor
    """(N,) bool: the model stopped by itself rather than hitting ``max_new_tokens``."""

    @property
    def input_ids(self) -> torch.Tensor:
        """(N, P + R) prompt and response, as a model scores them again (with ``attention_mask``)."""
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(N, P + R) 1 on real prompt and response tokens."""
        return torch.cat([self.query_mask, self.response_mask], dim=1)


def trim_rows(
    layout: dict[str, torch.Tensor], rows: torch.Tensor, widths: torch.Tensor
) -> tuple[dict[str, torch.Tensor], int]:
    """Rows ``rows`` of a ``GenerationOutput``-laid-out batch (``query_*`` left-padded,
    ``response_*`` right-padded: rollouts, PPO-ptx's demonstrations) cut to their own widths,
    and that response width.

    ``widths`` is (B, 2) on the CPU: each row's real prompt and response lengths. The columns
    dropped are padding in every selected row: the forward pass and every masked mean are
    unchanged, and a minibatch of short replies no longer pays for the longest one.
    """
    query_width, response_width = (int(w) for w in widths[rows.cpu()].amax(0).clamp_min(1))
    device_rows = rows.to(layout["query_ids"].device)
    trimmed = {
        "query_ids": layout["query_ids"][device_rows, -query_width:],
        "query_mask": layout["query_mask"][device_rows, -query_width:],
        "response_ids": layout["response_ids"][device_rows, :response_width],
        "response_mask": layout["response_mask"][device_rows, :response_width],
    }
    return trimmed, response_width


def _ids(token_ids: int | Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    return torch.as_tensor([token_ids] if isinstance(token_ids, int) else list(token_ids), device=device)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end a reply: the tokenizer's EOS; the special token the chat template
    closes an assistant turn with, when that is not EOS (Gemma's ``<end_of_turn>``, a
    Llama-3 base tokenizer's ``<|eot_id|>``); and every end id the checkpoint's own
    ``generation_config`` lists. SFT learnt to end a turn with the template's token, so
    sampling stopping at EOS alone would run every reply to the length limit."""
    ids, renderer = [tokenizer.eos_token_id], Renderer(tokenizer)
    if renderer.uses_chat_template:
        closing = renderer.completions(["Hi"], ["Hello"])[1][0].split("Hello", 1)[-1]
        special = set(tokenizer.all_special_ids)
        ids += [i for i in tokenizer(closing, add_special_tokens=False)["input_ids"] if i in special][:1]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += list(configured) if isinstance(configured, list | tuple) else [configured]
    return [int(i) for i in dict.fromkeys(ids) if i is not None]


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(N, R) 1 up to and including the first stop token (EOS) of each row (all ones without one)."""
    is_eos = torch.isin(response_ids, _ids(eos_token_id, response_ids.device)).long()  # (N, R)
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before t
    return (eos_before == 0).long()


def sample_tokens(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, do_sample: bool = True
) -> torch.Tensor:
    """(B,) next tokens from (B, V) logits: greedy, or temperature / top-k / nucleus sampling.

    Sampling inverts each row's CDF at one uniform draw (``searchsorted`` with
    ``right=True``, so a zero-probability token is never picked).
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)  # (B, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # mass before this token already > top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    cdf = probs.cumsum(dim=-1)  # (B, V)
    draw = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
) -> torch.Tensor:
    """(B, r) new tokens for LEFT-padded prompts, pad after each row's EOS, r <= max_new_tokens.

    One prefill pass, then one cached forward per step; stops when every row has
    emitted EOS. Positions count real tokens only, so left padding does not shift them.
    """
    batch, width = input_ids.shape
    mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens)], dim=1)  # (B, P + max)
    positions = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)  # (B, P)
    cache = DynamicCache(config=model.config)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **({"logits_to_keep": 1} if keeps_logits(type(model)) else {}),  # a model without it returns all
    ).logits[:, -1]  # (B, V)
    position = positions[:, -1:]  # (B, 1)
    tokens = input_ids.new_full((batch, max_new_tokens), pad_token_id)
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    stops = _ids(eos_token_id, input_ids.device)  # EOS and any other id that ends a reply
    for step in range(max_new_tokens):
        token = sample_tokens(logits, temperature, top_k, top_p, do_sample)
        token = token.masked_fill(finished, pad_token_id)
        tokens[:, step] = token
        finished |= torch.isin(token, stops)
        if step + 1 == max_new_tokens or bool(finished.all()):
            return tokens[:, : step + 1]
        position = position + 1
        logits = model(
            input_ids=token[:, None],
            attention_mask=mask[:, : width + step + 1],
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
    return tokens


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    batch_size: int = 64,
    seed: int | None = None,
    max_prompt_tokens: int | None = None,
    response_prefix: str = "",
) -> GenerationOutput:
    """Continue ``prompts`` (already rendered for the model) in batches of ``batch_size``.

    Greedy decoding (``do_sample=False``) gives the same tokens whatever the batch
    composition; sampling with a ``seed`` gives the same samples on every call. The
    seed forks the RNG, so the caller's random state is left untouched. Prompts longer
    than ``max_prompt_tokens`` keep their last tokens.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be positive")
    device = next(model.parameters()).device
    pad_id, eos_id = tokenizer.pad_token_id, stop_token_ids(model, tokenizer)
    encoded = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    keep = max_prompt_tokens or encoded["input_ids"].shape[1]  # left padding: the last columns are the prompts' ends
    query_ids, query_mask = encoded["input_ids"][:, -keep:], encoded["attention_mask"][:, -keep:]  # (N, P)
    if query_ids.shape[1] == 0:
        raise ValueError("cannot generate from empty prompts")
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
    responses = []
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            ids = query_ids[start : start + batch_size].to(device)  # (b, P)
            mask = query_mask[start : start + batch_size].to(device)
            width = int(mask.sum(1).max())  # drop columns that are padding in every row
            new = decode(
                model,
                ids[:, -width:],
                mask[:, -width:],
                max_new_tokens,
                eos_id,
                pad_id,
                temperature,
                top_k,
                top_p,
                do_sample,
            )  # (b, r), r <= max_new_tokens
            responses.append(F.pad(new, (0, max_new_tokens - new.shape[1]), value=pad_id))
    model.train(was_training)

    response_ids = torch.cat(responses).cpu()  # (N, max_new_tokens)
    response_mask = response_mask_from_ids(response_ids, eos_id)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    width = max(int(response_mask.sum(1).max()), 1)  # the longest response, not max_new_tokens
    response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return GenerationOutput(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        texts=[t.removeprefix(response_prefix) for t in texts],
        ended_with_eos=torch.isin(response_ids, _ids(eos_id)).any(dim=1),
    )


def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    model_config: ModelConfig,
    settings: GenerationConfig,
    *,
    seed: int | None,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    do_sample: bool = True,
) -> GenerationOutput:
    """Responses to canonical ``prompts``: the one way every stage turns prompts into samples.

    Prompts are rendered as in training (``Renderer.for_model(model_config, tokenizer)``:
    the tokenizer's chat template, else ``model_config.prompt_template``) and the
    sampling settings come from ``settings``; ``max_new_tokens`` overrides the settings'
    limit for a stage that samples shorter on purpose (PPO rollouts),
    ``do_sample=False`` decodes greedily.
    """
    renderer = Renderer.for_model(model_config, tokenizer)
    return generate(
        model,
        tokenizer,
        renderer.prompts(prompts),
        max_new_tokens=max_new_tokens or settings.max_new_tokens,
        **settings.sampling_kwargs(),
        do_sample=do_sample,
        batch_size=batch_size,
        seed=seed,
        max_prompt_tokens=model_config.max_prompt_tokens,
        response_prefix=renderer.decoded_prefix,
    )
