"""PPO for language models: per-token rewards, GAE, clipped policy and value losses.

Shapes follow one convention: (B, T) tensors over the RESPONSE tokens, with
``mask`` 1 on real response tokens and 0 on padding (and on anything else the
policy did not choose, e.g. tool output inside a response).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignops.core._dtypes import at_least_float32
from alignops.core.kl import kl_penalty
from alignops.core.masked import masked_mean, masked_var

Stats = dict[str, torch.Tensor]


def _zeros_off_mask(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * mask: padding may hold inf/nan, and 0 * inf = nan.
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    estimator: str = "k1",
) -> torch.Tensor:
    """r_t = -β·KL_t on every response token, plus the sequence score on the last one.

    Ziegler et al. 2019 §2.2 / TRL: R(x, y) = r(x, y) - β log(π/π_ref), spread per token.
    scores (B,), logprobs/ref_logprobs/mask (B, T) → (B, T), 0 off the mask. A row
    with no valid token gets no score.
    """
    valid = mask.bool()  # (B, T)
    kl = _zeros_off_mask(kl_penalty(logprobs, ref_logprobs, estimator), valid)  # (B, T)
    positions = torch.arange(valid.shape[-1], device=valid.device)  # (T,)
    last_index = torch.where(valid, positions, -1).amax(dim=-1)  # (B,), -1 for an empty row
    is_last = positions.unsqueeze(0) == last_index.unsqueeze(1)  # (B, T)
    score_at_end = torch.where(is_last, at_least_float32(scores).unsqueeze(1), 0.0)  # (B, T)
    return -kl_coef * kl + score_at_end


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) → (advantages, returns).

    δ_t = r_t + γ V_{t+1} - V_t,  A_t = δ_t + γλ A_{t+1},  R_t = A_t + V_t,  all (B, T).
    Only valid positions are steps: "t+1" is the NEXT VALID position of the row, and
    after the last valid token V and A are 0 (the episode ends). Rewards and values
    at masked positions are ignored; advantages and returns there are 0. The result
    is a constant target (computed without grad). No loop over T: the recursion is
    unrolled into a matrix product over each row's valid steps.
    """
    valid = mask.bool()  # (B, T)
    rewards, values = at_least_float32(rewards), at_least_float32(values)  # (B, T)
    # Move each row's valid steps to the front (stable), so "next valid" is "next column".
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # (B, T)
    packed_valid = valid.gather(1, order)  # (B, T), a prefix mask
    packed_rewards = torch.where(packed_valid, rewards.gather(1, order), 0.0)
    packed_values = torch.where(packed_valid, values.gather(1, order), 0.0)  # V = 0 after the end
    next_values = F.pad(packed_values[:, 1:], (0, 1))  # (B, T)
    delta = torch.where(packed_valid, packed_rewards + gamma * next_values - packed_values, 0.0)
    # A_t = sum_{k >= t} (γλ)^(k-t) δ_k: one (T, T) upper-triangular discount matrix, no loop.
    steps = torch.arange(delta.shape[1], device=delta.device, dtype=delta.dtype)
    gaps = steps.unsqueeze(0) - steps.unsqueeze(1)  # (T, T): k - t
    discount = torch.where(gaps >= 0, torch.full_like(gaps, gamma * lam).pow(gaps.clamp_min(0)), 0.0)
    packed_advantages = delta @ discount.T  # (B, T)
    advantages = torch.zeros_like(delta).scatter(1, order, packed_advantages)
    advantages = _zeros_off_mask(advantages, valid)
    returns = _zeros_off_mask(advantages + values, valid)  # (B, T)
    return advantages, returns


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, Stats]:
    """Clipped surrogate objective, as a loss to minimise (Schulman et al. 2017, eq. 7).

    L = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε, 1+ε)),  ρ_t = exp(logp_t - old_logp_t),
    averaged over the valid tokens of the batch. All inputs (B, T).
    ``policy/approxkl`` is ½·mean((logp - old_logp)²) as in lm-human-preferences (k2 of
    KL(π_old ‖ π)); ``policy/clipfrac`` is the fraction of tokens where the clipped
    branch is the active one.
    """
    valid = mask.bool()  # (B, T)
    # Zero the log-ratio off the mask BEFORE exp, or padding's inf would reach the gradient.
    log_ratio = _zeros_off_mask(at_least_float32(logp) - at_least_float32(old_logp), valid)  # (B, T)
    advantages = _zeros_off_mask(at_least_float32(advantages), valid)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), valid)
    with torch.no_grad():
        stats = {
            "loss/policy": loss.detach(),
            "policy/approxkl": 0.5 * masked_mean(log_ratio * log_ratio, valid),
            "policy/clipfrac": masked_mean((clipped > unclipped).float(), valid),
        }
    return loss, stats


def value_loss_clipped(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, Stats]:
    """½·mean max((V - R)², (clip(V, V_old ± c) - R)²) over valid tokens, all (B, T).

    The clipped value loss of lm-human-preferences ``train_policy.py`` / OpenAI baselines PPO2.
    """
    valid = mask.bool()  # (B, T)
    values = _zeros_off_mask(at_least_float32(values), valid)  # (B, T)
    old_values = _zeros_off_mask(at_least_float32(old_values), valid)  # (B, T)
    returns = _zeros_off_mask(at_least_float32(returns), valid)  # (B, T)
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)  # (B, T)
    unclipped_error = (values - returns) ** 2  # (B, T)
    clipped_error = (values_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), valid)
    with torch.no_grad():
        stats = {
            "loss/value": loss.detach(),
            "val/clipfrac": masked_mean((clipped_error > unclipped_error).float(), valid),
            "val/vpred": masked_mean(values, valid),
            "val/error": masked_mean(unclipped_error, valid),
        }
    return loss, stats


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over valid tokens (CleanRL ``ppo.py``); nan when Var[R] = 0.

    1 is a perfect value function, 0 no better than predicting the mean, < 0 worse.
    values, returns, mask (B, T) → 0-dim tensor (no grad).
    """
    valid = mask.bool()
    values, returns = at_least_float32(values), at_least_float32(returns)
    var_returns = masked_var(returns, valid, unbiased=False)
    var_residual = masked_var(returns - values, valid, unbiased=False)
    ratio = var_residual / var_returns
    return torch.where(var_returns > 0, 1 - ratio, torch.full_like(ratio, float("nan")))
