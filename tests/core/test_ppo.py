"""Per-token rewards, GAE and the PPO losses against loops over batch and time."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from alignops.core import explained_variance, gae, per_token_rewards, ppo_clip_loss, value_loss_clipped
from tests.core.inputs import awkward_mask, poison_padding, right_padded_mask

B, T = 7, 10


def valid_steps(mask: torch.Tensor, b: int) -> list[int]:
    return [t for t in range(mask.shape[1]) if mask[b, t]]


def naive_gae(rewards, values, mask, gamma, lam):
    advantages = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        steps = valid_steps(mask, b)  # the episode, with padding and holes squeezed out
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(steps):
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            next_advantage = delta + gamma * lam * next_advantage
            next_value = float(values[b, t])
            advantages[b, t] = next_advantage
    returns = torch.where(mask, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


def test_gae_matches_a_loop_over_each_episode(generator):
    for make_mask in (right_padded_mask, awkward_mask):
        mask = make_mask(B, T, generator)
        rewards = torch.randn(B, T, generator=generator, dtype=torch.float64)
        values = torch.randn(B, T, generator=generator, dtype=torch.float64)
        advantages, returns = gae(poison_padding(rewards, mask), poison_padding(values, mask), mask, 0.95, 0.9)
        expected_advantages, expected_returns = naive_gae(rewards, values, mask, 0.95, 0.9)
        assert_close(advantages, expected_advantages)
        assert_close(returns, expected_returns)


def test_gae_with_unit_gamma_and_lambda_gives_reward_to_go(generator):
    mask = right_padded_mask(B, T, generator)
    rewards = torch.where(mask, torch.randn(B, T, generator=generator, dtype=torch.float64), 0.0)
    values = torch.randn(B, T, generator=generator, dtype=torch.float64)
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in valid_steps(mask, b):
            reward_to_go[b, t] = sum(float(rewards[b, k]) for k in range(t, T))
    assert_close(returns, reward_to_go)


def test_gae_with_zero_lambda_is_the_one_step_td_error():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.25, 0.75, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    # δ_t = r_t + γ V_{t+1} - V_t, with V after the last valid token = 0 (padding's 9s ignored).
    assert_close(advantages, torch.tensor([[0.0 + 0.5 * 0.25 - 0.5, 0.0 + 0.5 * 0.75 - 0.25, 1.0 - 0.75, 0.0]]))


def test_gae_gives_constant_targets(generator):
    values = torch.randn(B, T, generator=generator, requires_grad=True)
    advantages, returns = gae(torch.randn(B, T, generator=generator), values, torch.ones(B, T), 1.0, 0.95)
    assert not advantages.requires_grad and not returns.requires_grad


def test_per_token_rewards_match_a_loop(generator):
    for estimator, kl in (("k1", lambda lp, ref: lp - ref), ("k3", lambda lp, ref: math.exp(ref - lp) - ref + lp - 1)):
        for make_mask in (right_padded_mask, awkward_mask):
            mask = make_mask(B, T, generator)
            scores = torch.randn(B, generator=generator, dtype=torch.float64)
            logprobs = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 4
            ref_logprobs = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 4
            rewards = per_token_rewards(
                scores, poison_padding(logprobs, mask), ref_logprobs, mask, kl_coef=0.1, estimator=estimator
            )
            expected = torch.zeros(B, T, dtype=torch.float64)
            for b in range(B):
                steps = valid_steps(mask, b)
                for t in steps:
                    expected[b, t] = -0.1 * kl(float(logprobs[b, t]), float(ref_logprobs[b, t]))
                if steps:
                    expected[b, steps[-1]] += float(scores[b])
            assert_close(rewards, expected)


def test_per_token_rewards_put_the_score_on_the_last_token_only():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    zeros = torch.zeros(3, 5)
    rewards = per_token_rewards(torch.tensor([2.0, 3.0, 4.0]), zeros, zeros, mask, kl_coef=torch.tensor(0.2))
    assert_close(rewards, torch.tensor([[0, 0, 2.0, 0, 0], [3.0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))


def naive_masked_mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_ppo_clip_loss_matches_a_loop(generator):
    mask = awkward_mask(B, T, generator)
    old_logp = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 3
    logp = old_logp + torch.randn(B, T, generator=generator, dtype=torch.float64) * 0.3
    advantages = torch.randn(B, T, generator=generator, dtype=torch.float64)
    cliprange = 0.2
    loss, stats = ppo_clip_loss(poison_padding(logp, mask), old_logp, poison_padding(advantages, mask), mask, cliprange)
    losses, clipped, squared = [], [], []
    for b in range(B):
        for t in valid_steps(mask, b):
            ratio = math.exp(float(logp[b, t] - old_logp[b, t]))
            a = float(advantages[b, t])
            unclipped_term = -a * ratio
            clipped_term = -a * min(max(ratio, 1 - cliprange), 1 + cliprange)
            losses.append(max(unclipped_term, clipped_term))
            clipped.append(float(clipped_term > unclipped_term))
            squared.append(float(logp[b, t] - old_logp[b, t]) ** 2)
    assert_close(loss, torch.tensor(naive_masked_mean(losses), dtype=torch.float64))
    assert_close(stats["loss/policy"], loss.detach())
    assert_close(stats["policy/clipfrac"], torch.tensor(naive_masked_mean(clipped)))
    assert_close(stats["policy/approxkl"], torch.tensor(0.5 * naive_masked_mean(squared), dtype=torch.float64))


def test_ppo_clip_loss_at_the_old_policy_is_minus_the_mean_advantage(generator):
    mask = right_padded_mask(B, T, generator)
    logp = -torch.rand(B, T, generator=generator)
    advantages = torch.randn(B, T, generator=generator)
    loss, stats = ppo_clip_loss(logp, logp, advantages, mask, 0.2)
    assert_close(loss, -advantages[mask].mean())
    assert stats["policy/clipfrac"] == 0 and stats["policy/approxkl"] == 0


def test_value_loss_clipped_matches_a_loop(generator):
    mask = awkward_mask(B, T, generator)
    old_values = torch.randn(B, T, generator=generator, dtype=torch.float64)
    values = old_values + torch.randn(B, T, generator=generator, dtype=torch.float64) * 0.5
    returns = torch.randn(B, T, generator=generator, dtype=torch.float64)
    c = 0.2
    loss, stats = value_loss_clipped(poison_padding(values, mask), old_values, poison_padding(returns, mask), mask, c)
    losses, clipped, predictions, errors = [], [], [], []
    for b in range(B):
        for t in valid_steps(mask, b):
            v, v_old, r = float(values[b, t]), float(old_values[b, t]), float(returns[b, t])
            v_clipped = v_old + min(max(v - v_old, -c), c)
            losses.append(0.5 * max((v - r) ** 2, (v_clipped - r) ** 2))
            clipped.append(float((v_clipped - r) ** 2 > (v - r) ** 2))
            predictions.append(v)
            errors.append((v - r) ** 2)
    assert_close(loss, torch.tensor(naive_masked_mean(losses), dtype=torch.float64))
    assert_close(stats["loss/value"], loss.detach())
    assert_close(stats["val/clipfrac"], torch.tensor(naive_masked_mean(clipped)))
    assert_close(stats["val/vpred"], torch.tensor(naive_masked_mean(predictions), dtype=torch.float64))
    assert_close(stats["val/error"], torch.tensor(naive_masked_mean(errors), dtype=torch.float64))


def naive_variance(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / len(xs)


def test_explained_variance_matches_a_loop(generator):
    mask = awkward_mask(B, T, generator)
    returns = torch.randn(B, T, generator=generator, dtype=torch.float64)
    values = returns + torch.randn(B, T, generator=generator, dtype=torch.float64) * 0.5
    got = explained_variance(poison_padding(values, mask), returns, mask)
    pairs = [(float(values[b, t]), float(returns[b, t])) for b in range(B) for t in valid_steps(mask, b)]
    expected = 1 - naive_variance([r - v for v, r in pairs]) / naive_variance([r for _, r in pairs])
    assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_explained_variance_is_one_for_a_perfect_critic_and_nan_for_constant_returns(generator):
    mask = right_padded_mask(B, T, generator)
    returns = torch.randn(B, T, generator=generator)
    assert_close(explained_variance(returns, returns, mask), torch.tensor(1.0))
    assert torch.isnan(explained_variance(torch.randn(B, T), torch.ones(B, T), mask))
