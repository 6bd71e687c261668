"""Per-token KL estimators and the KL-coefficient controllers of Ziegler et al. 2019.

The estimators take log-probs of the SAMPLED tokens under the policy (``logp``)
and the reference (``ref_logp``), both (B, T), and estimate KL(π ‖ π_ref) per
token (Schulman 2020, "Approximating KL divergence"). They do not reduce, so
padding is the caller's to mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignops.core._dtypes import at_least_float32


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π - log π_ref: unbiased, high variance, can be negative per token. (B, T)."""
    return at_least_float32(logp) - at_least_float32(ref_logp)


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π - log π_ref)²: biased, low variance, never negative. (B, T)."""
    log_ratio = at_least_float32(logp) - at_least_float32(ref_logp)
    return 0.5 * log_ratio * log_ratio


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = π_ref / π: unbiased and never negative. (B, T)."""
    log_r = at_least_float32(ref_logp) - at_least_float32(logp)  # (B, T)
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate by ``KL_ESTIMATORS[estimator]``. (B, T) → (B, T)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logp, ref_logp)


class FixedKLController:
    """A constant KL coefficient β (Ziegler et al. 2019, the non-adaptive runs)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """Nothing to adapt; kept so loops can treat both controllers alike."""


class AdaptiveKLController:
    """β that steers the observed KL towards ``target`` (Ziegler et al. 2019, §2.2).

    e = clip(KL / target - 1, -0.2, 0.2);  β ← β · (1 + e · n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef <= 0:
            raise ValueError(f"init_kl_coef must be > 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """Adapt β after ``n_steps`` samples whose mean KL was ``current_kl``.

        A tensor ``current_kl`` is read with ``float()`` (one host sync per PPO
        batch): β is plain Python state, multiplied into rewards as a scalar.
        """
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
