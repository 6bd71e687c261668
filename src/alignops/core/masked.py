"""Reductions and whitening restricted to the valid positions of a mask.

The ``mask`` is read as boolean (nonzero = valid). Masked positions may hold any
value, including ``inf``/``nan`` (padding logits, ``-100`` labels): they are
selected away with ``torch.where`` rather than multiplied by zero, so they never
leak into a result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over valid positions, over all of them (``dim=None``) or along ``dim``.

    TRL ``masked_mean`` / lm-human-preferences. An all-masked selection gives 0, not nan.
    """
    valid = mask.bool()  # same shape as x, e.g. (B, T)
    total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return total.sum() / valid.sum().clamp_min(1)
    return total.sum(dim) / valid.sum(dim).clamp_min(1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid positions (a 0-dim tensor).

    TRL ``masked_var``: Bessel-corrected by n / (n - 1) when ``unbiased``. With a
    single valid position the variance is 0 (TRL raises instead; we avoid the host sync).
    """
    valid = mask.bool()
    centered = x - masked_mean(x, valid)
    variance = masked_mean(centered * centered, valid)
    if unbiased:
        n = valid.sum()
        variance = variance * n / (n - 1).clamp_min(1)
    return variance


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(x - mean) / std`` over the valid positions; padded positions come back as 0.

    lm-human-preferences ``whiten`` / TRL ``masked_whiten`` (unbiased variance, eps 1e-8).
    With ``shift_mean=False`` the mean is added back (PPO advantages are whitened
    with it, rewards in lm-human-preferences without). ``all_reduce_sum`` (a sum over the
    ranks of a distributed run) takes the mean and variance over every rank's positions.
    """
    valid = mask.bool()
    if all_reduce_sum is None:
        mean = masked_mean(x, valid)
        var = masked_var(x, valid, unbiased=True)
    else:  # statistics over every rank's valid positions (OpenRLHF/veRL whiten advantages globally)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        total, n = all_reduce_sum(torch.stack([torch.where(valid, x, zero).sum(), valid.sum().to(x.dtype)]))
        mean = total / n.clamp_min(1)
        squares = all_reduce_sum(torch.where(valid, (x - mean) ** 2, zero).sum())
        var = squares / (n - 1).clamp_min(1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))
