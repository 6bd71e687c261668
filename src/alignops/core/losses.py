"""Supervised and preference losses: SFT cross-entropy, Bradley–Terry reward loss, DPO/IPO.

Every loss returns ``(loss, stats)``: ``loss`` is a 0-dim tensor with a graph,
``stats`` maps metric names to detached 0-dim tensors on the input's device
(the training loop decides when to gather and ``.item()`` them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from alignops.core._dtypes import at_least_float32
from alignops.core.logprobs import shifted_token_logprobs

Stats = dict[str, torch.Tensor]


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Completion-only next-token cross-entropy, averaged over the batch's completion tokens.

    Radford et al. 2018 language-modelling objective, restricted to the response as in
    Ouyang et al. 2022. The shift happens HERE (Hugging Face convention): ``labels``
    and ``mask`` are aligned with the input ids, ``logits[:, t]`` predicts
    ``labels[:, t + 1]``, and ``mask[:, t + 1]`` says whether that target counts.
    ``mask[:, 0]`` is therefore never used. Labels at masked positions are ignored
    (``-100`` or a pad id are both fine).

    logits (B, T, V), labels (B, T) integer, mask (B, T) 1 on completion tokens.
    """
    target_mask = mask[:, 1:].bool()  # (B, T-1)
    token_logps = shifted_token_logprobs(logits, labels, mask)  # (B, T-1), 0 off the mask
    n_tokens = target_mask.sum()
    loss = -token_logps.sum() / n_tokens.clamp_min(1)
    return loss, {"loss": loss.detach(), "tokens": n_tokens.detach()}


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, Stats]:
    """Pairwise reward-model loss ``mean(-log σ(r_c - r_r - m))``.

    Bradley & Terry 1952 preference model, as the RM loss of Ouyang et al. 2022 (eq. 1);
    the optional margin ``m`` (B,) is Llama 2's (Touvron et al. 2023, eq. 2).
    r_chosen, r_rejected (B,). ``reward/accuracy`` counts ties as wrong.
    """
    r_chosen, r_rejected = at_least_float32(r_chosen), at_least_float32(r_rejected)  # (B,)
    gap = r_chosen - r_rejected  # (B,)
    logits = gap if margin is None else gap - margin
    loss = -F.logsigmoid(logits).mean()
    stats = {
        "loss/reward": loss.detach(),
        "reward/accuracy": (gap > 0).float().mean().detach(),
        "reward/margin": gap.mean().detach(),
        "reward/chosen": r_chosen.mean().detach(),
        "reward/rejected": r_rejected.mean().detach(),
    }
    return loss, stats


def _dpo_sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    # Rafailov et al. 2023 eq. 7; conservative DPO (Mitchell 2023) when label_smoothing > 0.
    return -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)


def _dpo_ipo(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    # Azar et al. 2023 (IPO): regress h towards 1/(2β), with β playing the paper's τ.
    if label_smoothing != 0.0:
        raise ValueError("label_smoothing applies to the sigmoid DPO loss only, not to ipo")
    return (logits - 1 / (2 * beta)) ** 2


DPO_LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _dpo_sigmoid,
    "ipo": _dpo_ipo,
}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """Direct preference optimisation from per-sequence log-probs, all (B,).

    h = (log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r)), then
    ``DPO_LOSSES[loss_type]``: ``sigmoid`` (Rafailov et al. 2023, with conservative
    label smoothing ε: -(1-ε) log σ(βh) - ε log σ(-βh)) or ``ipo`` (Azar et al. 2023:
    (h - 1/(2β))²). h is computed on the log-probs exactly as given: the IPO paper
    uses length-AVERAGED log-probs, so pass ``sequence_logprobs(..., average=True)``
    for IPO as published, and summed log-probs for DPO.
    Implicit rewards in the stats are β·(log π - log π_ref).
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {sorted(DPO_LOSSES)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_logratios = at_least_float32(policy_chosen_logps) - at_least_float32(ref_chosen_logps)  # (B,)
    rejected_logratios = at_least_float32(policy_rejected_logps) - at_least_float32(ref_rejected_logps)  # (B,)
    logits = chosen_logratios - rejected_logratios  # (B,) = h
    loss = DPO_LOSSES[loss_type](logits, beta, label_smoothing).mean()

    chosen_rewards = (beta * chosen_logratios).detach()  # (B,)
    rejected_rewards = (beta * rejected_logratios).detach()  # (B,)
    stats = {
        "loss/dpo": loss.detach(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }
    return loss, stats
