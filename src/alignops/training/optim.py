"""The optimiser and learning-rate schedule of every stage: AdamW with decay on matrices only,
linear warm-up then cosine, linear or constant."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Factor on the peak learning rate after ``step`` optimiser steps.

    Linear warm-up from 1/(warmup+1) to 1 over ``warmup_steps``, then ``SCHEDULES[schedule]``
    from 1 down to 0 at ``total_steps`` (nanoGPT ``get_lr``, without its floor).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return SCHEDULES[schedule](progress)


SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int) -> LambdaLR:
    """``lr_multiplier`` as a torch scheduler; step it once per optimiser step, not per micro-batch."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, schedule))


def decay_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices (linear and embedding weights), none on norms and biases.

    nanoGPT ``configure_optimizers``: decaying a gain or a bias only pulls it towards 0.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, config: Any) -> torch.optim.AdamW:
    """AdamW at ``config.learning_rate`` with ``config.weight_decay`` on matrices and betas
    (0.9, ``config.adam_beta2``): the optimiser of every epoch-based stage."""
    return torch.optim.AdamW(
        decay_parameter_groups(model, config.weight_decay), lr=config.learning_rate, betas=(0.9, config.adam_beta2)
    )
