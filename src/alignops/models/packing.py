"""Sequence packing for SFT: several short examples per row, each attending only to itself.

Packed rows carry ``position_ids`` that restart at 0 for every example and NO
``attention_mask``. Transformers (>= 4.54; ``masking_utils.find_packed_sequence_indices``)
reads the restarts as example boundaries and builds a block-diagonal causal mask, for
eager and SDPA attention alike, so a token never attends across a boundary and a
packed example gets exactly the logits it would get alone (``tests/models`` checks
this). The forward pass must get ``use_cache=False``: with a cache (the default
outside training) transformers skips the packing check and examples would see each
other. The tail of a row after the last example is padding in a segment of its own,
with ``completion_mask`` 0.
"""

from __future__ import annotations

import numpy as np
import torch

from alignops.models.collate import Batch


def assign_rows(lengths: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Next-fit bin packing in the given order: (row, offset) of each example.

    The one Python loop in packing, over example lengths (integers) once per epoch;
    next-fit is inherently sequential, and the token copying below is vectorised.
    """
    rows, offsets = np.empty(len(lengths), np.int64), np.empty(len(lengths), np.int64)
    row, fill = 0, 0
    for i, length in enumerate(lengths.tolist()):
        if length > max_length:
            raise ValueError(f"example {i} has {length} tokens, more than a packed row's {max_length}")
        if fill + length > max_length:
            row, fill = row + 1, 0
        rows[i], offsets[i], fill = row, fill, fill + length
    return rows, offsets


def pack_sequences(batch: Batch, max_length: int, pad_token_id: int) -> Batch:
    """Right-padded ``input_ids``/``attention_mask``/``completion_mask`` (N, T) → packed (M, max_length).

    Returns ``input_ids``, ``completion_mask`` and ``position_ids``; examples keep their order.
    """
    lengths = batch["attention_mask"].sum(1)  # (N,)
    rows, offsets = assign_rows(lengths.numpy(), max_length)
    n_rows = int(rows.max()) + 1 if len(rows) else 0
    token = batch["attention_mask"].bool()  # (N, T) real tokens, row-major = example order
    position = torch.arange(batch["input_ids"].shape[1]).expand_as(token)  # (N, T) within the example
    target_row = torch.as_tensor(rows)[:, None].expand_as(token)[token]  # (n_tokens,)
    target_col = (torch.as_tensor(offsets)[:, None] + position)[token]

    fill = torch.zeros(n_rows, dtype=torch.long).index_add_(0, torch.as_tensor(rows), lengths)  # (M,)
    # the padding tail counts 0, 1, ... as a segment of its own
    position_ids = (torch.arange(max_length)[None, :] - fill[:, None]).clamp(min=0)  # (M, L)
    input_ids = torch.full((n_rows, max_length), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((n_rows, max_length), dtype=torch.long)
    input_ids[target_row, target_col] = batch["input_ids"][token]
    completion_mask[target_row, target_col] = batch["completion_mask"][token]
    position_ids[target_row, target_col] = position[token]
    return {"input_ids": input_ids, "completion_mask": completion_mask, "position_ids": position_ids}
