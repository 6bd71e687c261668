"""SFT, Bradley–Terry and DPO/IPO losses against naive references, plus their behaviour."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from alignops.core import DPO_LOSSES, bradley_terry_loss, dpo_loss, sft_loss
from tests.core.inputs import awkward_mask

B, T, V = 6, 9, 11


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def naive_sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> float:
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(1, logits.shape[1]):
            if mask[b, t]:
                row = logits[b, t - 1].tolist()
                total -= row[int(labels[b, t])] - math.log(sum(math.exp(z) for z in row))
                count += 1
    return total / count


# --- SFT ---------------------------------------------------------------------


def test_sft_loss_matches_a_loop_over_completion_tokens(generator):
    logits = torch.randn(B, T, V, generator=generator, dtype=torch.float64)
    labels = torch.randint(V, (B, T), generator=generator)
    mask = awkward_mask(B, T, generator)
    loss, stats = sft_loss(logits, torch.where(mask, labels, -100), mask)
    assert_close(loss, torch.tensor(naive_sft_loss(logits, labels, mask), dtype=torch.float64))
    assert stats["tokens"] == int(mask[:, 1:].sum())
    assert_close(stats["loss"], loss.detach())


def test_sft_loss_agrees_with_cross_entropy_on_shifted_labels(generator):
    logits = torch.randn(B, T, V, generator=generator)
    labels = torch.randint(V, (B, T), generator=generator)
    mask = awkward_mask(B, T, generator)
    hf_labels = torch.where(mask, labels, -100)[:, 1:]  # what a Hugging Face model does with labels
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), hf_labels.reshape(-1))
    assert_close(sft_loss(logits, labels, mask)[0], expected)


def test_sft_loss_ignores_the_prompt():
    labels = torch.tensor([[1, 2, 3, 4]])
    prompt_only_changes = torch.zeros(1, 4, V)
    prompt_only_changes[0, 0, 5] = 50.0  # predicts token 1 (a prompt token) badly: must not matter
    mask = torch.tensor([[0, 0, 1, 1]])
    loss, _ = sft_loss(prompt_only_changes, labels, mask)
    assert_close(loss, torch.tensor(math.log(V)))


def test_sft_loss_with_bf16_logits_is_float32_and_close(generator):
    logits = torch.randn(B, T, V, generator=generator)
    labels = torch.randint(V, (B, T), generator=generator)
    mask = awkward_mask(B, T, generator)
    loss, _ = sft_loss(logits.bfloat16(), labels, mask)
    assert loss.dtype == torch.float32
    assert_close(loss, sft_loss(logits.bfloat16().float(), labels, mask)[0])


# --- Bradley–Terry -----------------------------------------------------------


def test_bradley_terry_loss_matches_a_loop(generator):
    r_chosen = torch.randn(B, generator=generator, dtype=torch.float64)
    r_rejected = torch.randn(B, generator=generator, dtype=torch.float64)
    margin = torch.rand(B, generator=generator, dtype=torch.float64)
    loss, stats = bradley_terry_loss(r_chosen, r_rejected, margin)
    expected = -sum(log_sigmoid(float(r_chosen[i] - r_rejected[i] - margin[i])) for i in range(B)) / B
    assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    accuracy = sum(float(r_chosen[i]) > float(r_rejected[i]) for i in range(B)) / B
    assert_close(stats["reward/accuracy"], torch.tensor(accuracy))
    assert_close(stats["reward/margin"], (r_chosen - r_rejected).mean())
    assert_close(stats["reward/chosen"], r_chosen.mean())
    assert_close(stats["reward/rejected"], r_rejected.mean())


def test_bradley_terry_loss_is_log_two_at_equal_rewards_and_falls_with_the_gap():
    rewards = torch.tensor([0.3, -1.0, 2.0])
    loss_at_tie, stats = bradley_terry_loss(rewards, rewards)
    assert_close(loss_at_tie, torch.tensor(math.log(2)))
    assert stats["reward/accuracy"] == 0  # ties count as wrong
    losses = [bradley_terry_loss(rewards + gap, rewards)[0] for gap in (-1.0, 0.0, 0.5, 2.0, 8.0)]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))


def test_bradley_terry_margin_demands_a_larger_gap():
    r_chosen, r_rejected = torch.tensor([1.0]), torch.tensor([0.0])
    assert_close(bradley_terry_loss(r_chosen, r_rejected, margin=torch.tensor([1.0]))[0], torch.tensor(math.log(2)))
    assert bradley_terry_loss(r_chosen, r_rejected, margin=0.5)[0] > bradley_terry_loss(r_chosen, r_rejected)[0]


# --- DPO / IPO ---------------------------------------------------------------


def random_logps(generator: torch.Generator) -> list[torch.Tensor]:
    return [-torch.rand(B, generator=generator, dtype=torch.float64) * 30 for _ in range(4)]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_sigmoid_loss_matches_a_loop(generator, label_smoothing):
    beta = 0.3
    policy_c, policy_r, ref_c, ref_r = random_logps(generator)
    loss, stats = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta, "sigmoid", label_smoothing)
    total = 0.0
    for i in range(B):
        h = float(policy_c[i] - ref_c[i]) - float(policy_r[i] - ref_r[i])
        total += -(1 - label_smoothing) * log_sigmoid(beta * h) - label_smoothing * log_sigmoid(-beta * h)
    assert_close(loss, torch.tensor(total / B, dtype=torch.float64))
    chosen = [beta * float(policy_c[i] - ref_c[i]) for i in range(B)]
    rejected = [beta * float(policy_r[i] - ref_r[i]) for i in range(B)]
    assert_close(stats["rewards/chosen"], torch.tensor(sum(chosen) / B, dtype=torch.float64))
    assert_close(stats["rewards/rejected"], torch.tensor(sum(rejected) / B, dtype=torch.float64))
    pairs = list(zip(chosen, rejected, strict=True))
    assert_close(stats["rewards/margins"], torch.tensor(sum(c - r for c, r in pairs) / B, dtype=torch.float64))
    assert_close(stats["rewards/accuracies"], torch.tensor(sum(c > r for c, r in pairs) / B))


def test_ipo_loss_matches_a_loop(generator):
    beta = 0.5
    policy_c, policy_r, ref_c, ref_r = random_logps(generator)
    loss, _ = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta, loss_type="ipo")
    expected = sum(
        (float(policy_c[i] - ref_c[i]) - float(policy_r[i] - ref_r[i]) - 1 / (2 * beta)) ** 2 for i in range(B)
    )
    assert_close(loss, torch.tensor(expected / B, dtype=torch.float64))


def test_dpo_loss_is_log_two_when_policy_equals_reference_and_smoothing_moves_it(generator):
    policy_c, policy_r, _, _ = random_logps(generator)
    loss, stats = dpo_loss(policy_c, policy_r, policy_c, policy_r, beta=0.1)
    assert_close(loss, torch.tensor(math.log(2), dtype=torch.float64))
    assert stats["rewards/margins"] == 0
    # With a preferred policy (h > 0) smoothing pulls the loss up; it is symmetric in h at ε = 0.5.
    ahead = (policy_c + 5.0, policy_r, policy_c, policy_r)
    plain, smoothed, half = (dpo_loss(*ahead, beta=0.1, label_smoothing=eps)[0] for eps in (0.0, 0.2, 0.5))
    assert plain < smoothed < half
    behind = (policy_c - 5.0, policy_r, policy_c, policy_r)
    assert_close(dpo_loss(*behind, beta=0.1, label_smoothing=0.5)[0], half)


def test_ipo_loss_is_minimal_at_h_equal_to_one_over_two_beta():
    beta = 0.25
    target = 1 / (2 * beta)
    zeros = torch.zeros(1, dtype=torch.float64)

    def ipo_at(h: float) -> torch.Tensor:
        return dpo_loss(zeros + h, zeros, zeros, zeros, beta, loss_type="ipo")[0]

    assert ipo_at(target) == 0
    assert all(ipo_at(target + offset) > 0 for offset in (-1.0, -0.1, 0.1, 1.0))


def test_dpo_rejects_unknown_variants_and_misplaced_smoothing():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(x, x, x, x, 0.1, loss_type="hinge-ish")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, 0.1, loss_type="ipo", label_smoothing=0.1)
    assert set(DPO_LOSSES) == {"sigmoid", "ipo"}
