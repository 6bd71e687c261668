"""Inputs for the core math tests: masks with the awkward rows real batches have."""

from __future__ import annotations

import torch


def awkward_mask(batch: int, time: int, generator: torch.Generator) -> torch.Tensor:
    """A (B, T) bool mask whose rows cover the cases padding produces.

    Row 0 is fully valid, row 1 has a single valid token, row 2 is all padding,
    row 3 is left-padded with a hole in the middle; the rest are right-padded to
    random lengths (a prompt offset, then a completion, then padding).
    """
    assert batch >= 5 and time >= 6
    mask = torch.zeros(batch, time, dtype=torch.bool)
    mask[0] = True
    mask[1, int(torch.randint(time, (1,), generator=generator))] = True
    mask[3, 2:] = True
    mask[3, time // 2] = False
    for row in range(4, batch):
        start = int(torch.randint(0, time // 2, (1,), generator=generator))
        length = int(torch.randint(1, time - start + 1, (1,), generator=generator))
        mask[row, start : start + length] = True
    return mask


def right_padded_mask(batch: int, time: int, generator: torch.Generator) -> torch.Tensor:
    """A (B, T) bool response mask as generation makes it: ones, then padding (row 2 empty, row 1 length 1)."""
    lengths = torch.randint(1, time + 1, (batch,), generator=generator)
    lengths[0], lengths[1], lengths[2] = time, 1, 0
    return torch.arange(time).unsqueeze(0) < lengths.unsqueeze(1)


def poison_padding(x: torch.Tensor, mask: torch.Tensor, value: float = float("inf")) -> torch.Tensor:
    """``x`` with ``value`` wherever ``mask`` is 0, to prove padding never leaks into a result."""
    return torch.where(mask.bool(), x, torch.full_like(x, value))
