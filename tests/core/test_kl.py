"""KL estimators against the formulas of Schulman 2020; controllers against Ziegler et al. 2019."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from alignops.core import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_k1, kl_k3, kl_penalty

B, T = 4, 6


def naive_per_token(fn, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [[fn(float(logp[b, t]), float(ref_logp[b, t])) for t in range(T)] for b in range(B)], dtype=torch.float64
    )


NAIVE = {
    "k1": lambda lp, ref: lp - ref,
    "k2": lambda lp, ref: 0.5 * (lp - ref) ** 2,
    "k3": lambda lp, ref: math.exp(ref - lp) - (ref - lp) - 1,
}


@pytest.mark.parametrize("estimator", sorted(NAIVE))
def test_estimators_match_their_formulas(generator, estimator):
    logp = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 5
    ref_logp = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 5
    expected = naive_per_token(NAIVE[estimator], logp, ref_logp)
    assert_close(kl_penalty(logp, ref_logp, estimator), expected)
    assert_close(KL_ESTIMATORS[estimator](logp, ref_logp), expected)


def test_named_estimators_and_default():
    logp, ref_logp = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -0.5]])
    assert_close(kl_penalty(logp, ref_logp), kl_k1(logp, ref_logp))
    assert_close(kl_k3(logp, ref_logp), kl_penalty(logp, ref_logp, "k3"))
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(logp, ref_logp, "k9")


def test_k3_is_non_negative_and_zero_only_when_equal(generator):
    logp = -torch.rand(B, T, generator=generator) * 5
    ref_logp = -torch.rand(B, T, generator=generator) * 5
    assert (kl_k3(logp, ref_logp) >= 0).all()
    assert (kl_k3(logp, logp) == 0).all()


def test_k1_and_k3_average_to_the_true_kl_on_samples():
    # Both are unbiased: on samples from π their mean is KL(π ‖ π_ref).
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, ref_logp = p.log()[samples], q.log()[samples]
    assert abs(float(kl_k1(logp, ref_logp).mean()) - true_kl) < 0.01
    assert abs(float(kl_k3(logp, ref_logp).mean()) - true_kl) < 0.01


def test_bf16_log_probs_give_float32_estimates():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16)
    assert kl_k3(logp, logp - 0.5).dtype == torch.float32


def naive_adaptive(value: float, current: float, n_steps: int, target: float, horizon: float) -> float:
    error = current / target - 1
    error = -0.2 if error < -0.2 else 0.2 if error > 0.2 else error
    return value * (1 + error * n_steps / horizon)


def test_adaptive_controller_follows_ziegler_step_by_step():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    expected = 0.2
    for current in (0.5, 5.9, 6.0, 6.5, 30.0, torch.tensor(7.2), 1e-3):
        controller.update(current, n_steps=256)
        expected = naive_adaptive(expected, float(current), 256, 6.0, 10_000)
        assert controller.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_controller_raises_above_target_lowers_below_and_is_clipped():
    def after(current_kl: float) -> float:
        controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=100)
        controller.update(current_kl, n_steps=10)
        return controller.value

    assert after(7.0) > 0.1
    assert after(5.0) < 0.1
    assert after(6.0) == pytest.approx(0.1)
    assert after(1000.0) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    assert after(0.0) == pytest.approx(0.1 * (1 - 0.2 * 10 / 100))


def test_fixed_controller_never_moves_and_bad_settings_fail_loudly():
    controller = FixedKLController(0.05)
    controller.update(100.0, n_steps=1000)
    assert controller.value == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(init_kl_coef=0.1, target=0.0, horizon=100)
    with pytest.raises(ValueError):
        AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=0)
    with pytest.raises(ValueError):
        FixedKLController(-1.0)
