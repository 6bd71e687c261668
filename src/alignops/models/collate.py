"""(prompt, completion) text pairs as training tensors, tokenised in batch calls.

Layout of every batch this module makes, row by row::

    input_ids        [ prompt tokens | completion tokens | EOS | pad pad ... ]   right-padded
    attention_mask   [ 1 ...       1 | 1 ...           1 |  1  |  0   0  ... ]
    completion_mask  [ 0 ...       0 | 1 ...           1 |  1  |  0   0  ... ]

With a chat template the completion carries the template's own end-of-turn tokens in
place of the EOS column. The loss reads ``completion_mask`` (aligned with ``input_ids``;
the shift to next-token targets happens in ``alignops.core.sft_loss``). Truncation, EOS placement and the
concatenation are tensor operations on the padded batch, never a loop over rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]


def _encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (N, L) and lengths (N,) of ``texts``, without special tokens."""
    if not texts:
        return torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"].sum(1)


def _take(ids: torch.Tensor, start: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    """Columns ``start[i] .. start[i] + width - 1`` of each row of ``ids`` (N, L) -> (N, width).

    Columns outside ``0 .. L - 1`` (a negative start, or past the end) read ``pad_id``.
    """
    columns = start[:, None] + torch.arange(width)  # (N, width)
    inside = (columns >= 0) & (columns < ids.shape[1])
    if ids.shape[1] == 0:
        return torch.full(columns.shape, pad_id, dtype=torch.long)
    taken = ids.gather(1, columns.clamp(0, ids.shape[1] - 1))
    return torch.where(inside, taken, torch.full_like(taken, pad_id))


def _completion_ids(
    tokenizer, prompts: list[str], prompt_ids: torch.Tensor, prompt_len: torch.Tensor, completions: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (N, Lc) and lengths (N,) of each completion as tokenised after its prompt.

    The tokenizer reads prompt + completion as one text, and the prompt's own tokens
    are dropped from the front. A completion tokenised alone can differ at its start:
    a SentencePiece tokenizer reads ``" It"`` as a stray ``"▁"`` followed by ``"▁It"``,
    where after a prompt it is the one token ``"▁It"``. For a row whose joint
    tokenisation does not begin with the prompt's tokens (a token spanning the
    boundary), the completion is tokenised alone.
    """
    joint_ids, joint_len = _encode(tokenizer, [p + c for p, c in zip(prompts, completions, strict=True)])
    width = max(joint_ids.shape[1], prompt_ids.shape[1])
    joint_ids = F.pad(joint_ids, (0, width - joint_ids.shape[1]), value=tokenizer.pad_token_id)
    in_prompt = torch.arange(prompt_ids.shape[1])[None, :] < prompt_len[:, None]  # (N, Lp)
    same = (joint_ids[:, : prompt_ids.shape[1]] == prompt_ids) | ~in_prompt
    prefix_holds = same.all(1) & (joint_len >= prompt_len)  # (N,)
    completion_len = joint_len - prompt_len
    completion_ids = _take(joint_ids, prompt_len, int(completion_len.clamp_min(0).max()), tokenizer.pad_token_id)
    if not bool(prefix_holds.all()):
        alone = (~prefix_holds).nonzero().squeeze(1)  # (M,)
        alone_ids, alone_len = _encode(tokenizer, [completions[i] for i in alone.tolist()])
        width = max(completion_ids.shape[1], alone_ids.shape[1])
        completion_ids = F.pad(completion_ids, (0, width - completion_ids.shape[1]), value=tokenizer.pad_token_id)
        completion_ids[alone] = F.pad(alone_ids, (0, width - alone_ids.shape[1]), value=tokenizer.pad_token_id)
        completion_len[alone] = alone_len
    columns = torch.arange(completion_ids.shape[1])[None, :]
    completion_ids = torch.where(columns < completion_len[:, None], completion_ids, tokenizer.pad_token_id)
    return completion_ids, completion_len


def tokenize_completions(
    tokenizer,
    prompts: list[str],
    completions: list[str],
    max_prompt_tokens: int,
    max_completion_tokens: int,
    completion_prefix: str = "",
    append_eos: bool = True,
) -> Batch:
    """Tokenise prompt/completion pairs into one right-padded batch (see the module docstring).

    ``prompts`` are already rendered for the model (``alignops.models.chat.Renderer``),
    and tokenised as generation tokenises them. A prompt keeps its LAST
    ``max_prompt_tokens`` tokens. A completion gets ``completion_prefix`` in front, is
    tokenised as it reads after its prompt (``_completion_ids``), and, with
    ``append_eos``, gets EOS at the end; one longer than ``max_completion_tokens``
    (EOS included) is cut and gets no EOS, so a model is never taught to stop
    mid-sentence. Without ``append_eos`` the completion already holds its end tokens
    (a chat template's) and is only cut. Empty completions are allowed (EOS only).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if max_prompt_tokens < 1 or max_completion_tokens < 1:
        raise ValueError("max_prompt_tokens and max_completion_tokens must be positive")
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad_id is None or pad_id == eos_id:
        raise ValueError("the tokenizer needs a pad token distinct from EOS (alignops.models.ensure_pad_token)")
    if not prompts:
        empty = torch.zeros(0, 0, dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone(), "completion_mask": empty.clone()}

    prompts = list(prompts)
    completions = [completion_prefix + c for c in completions]
    full_prompt_ids, prompt_len = _encode(tokenizer, prompts)  # (N, Lp), (N,)
    completion_ids, completion_len = _completion_ids(tokenizer, prompts, full_prompt_ids, prompt_len, completions)
    prompt_len_kept = prompt_len.clamp(max=max_prompt_tokens)
    prompt_ids = _take(full_prompt_ids, prompt_len - prompt_len_kept, int(prompt_len_kept.max()), pad_id)

    fits = completion_len < max_completion_tokens  # room for EOS
    with_eos = completion_len + 1 if append_eos else completion_len
    completion_len_kept = torch.where(fits, with_eos, torch.full_like(completion_len, max_completion_tokens))
    width = int(completion_len_kept.max())
    completion_ids = _take(completion_ids, torch.zeros_like(completion_len), width, pad_id)  # (N, Lc')
    if append_eos:
        eos_at = (torch.arange(width) == completion_len[:, None]) & fits[:, None]
        completion_ids = torch.where(eos_at, torch.full_like(completion_ids, eos_id), completion_ids)

    # row i: prompt (prompt_len_kept[i]) then completion (completion_len_kept[i]) then padding
    total = prompt_len_kept + completion_len_kept  # (N,)
    positions = torch.arange(int(total.max()))[None, :]  # (1, T)
    in_prompt = positions < prompt_len_kept[:, None]  # (N, T)
    in_sequence = positions < total[:, None]
    from_prompt = _take(prompt_ids, torch.zeros_like(total), positions.shape[1], pad_id)
    from_completion = _take(completion_ids, -prompt_len_kept, positions.shape[1], pad_id)  # column t - prompt length
    input_ids = torch.where(in_prompt, from_prompt, from_completion)
    input_ids = torch.where(in_sequence, input_ids, torch.full_like(input_ids, pad_id))
    return {
        "input_ids": input_ids,
        "attention_mask": in_sequence.long(),
        "completion_mask": (in_sequence & ~in_prompt).long(),
    }


def tokenize_preference_pairs(
    tokenizer,
    prompts: list[str],
    chosen: list[str],
    rejected: list[str],
    max_prompt_tokens: int,
    max_completion_tokens: int,
    completion_prefix: str = "",
) -> Batch:
    """B comparisons as 2B rows: rows ``[:B]`` answer with ``chosen``, rows ``[B:]`` with ``rejected``.

    Both halves share prompt tokens and padding width, so a reward model or DPO scores
    them in one forward pass and splits the output with ``.chunk(2)``.
    """
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"{len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected")
    return tokenize_completions(
        tokenizer,
        list(prompts) * 2,
        list(chosen) + list(rejected),
        max_prompt_tokens,
        max_completion_tokens,
        completion_prefix,
    )


def select_rows(batch: Batch, index: torch.Tensor) -> Batch:
    """Rows ``index`` of every tensor, with the columns that are padding in all of them cut off."""
    rows = {name: tensor[index] for name, tensor in batch.items()}
    if "attention_mask" in rows and rows["attention_mask"].numel():
        width = max(int(rows["attention_mask"].sum(1).max()), 1)
        rows = {name: tensor[:, :width] for name, tensor in rows.items()}
    return rows
