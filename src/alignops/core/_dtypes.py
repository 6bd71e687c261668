"""Precision helper shared by the core modules."""

from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 when it is bf16/fp16 (or an integer/bool tensor); float64 stays float64.

    Softmax, logsumexp, exp-of-differences and reductions lose too much in 8-bit
    mantissas, so the core upcasts before them and returns the upcast result.
    """
    if x.dtype == torch.float64:
        return x
    return x.float()
