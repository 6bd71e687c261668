"""What every loss promises its training loop: a scalar with finite gradients, detached stats."""

from __future__ import annotations

import pytest
import torch

from alignops.core import (
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    masked_whiten,
    per_token_rewards,
    ppo_clip_loss,
    sft_loss,
    value_loss_clipped,
)
from tests.core.inputs import awkward_mask, poison_padding

B, T, V = 6, 8, 10


def sft_case(g):
    mask = awkward_mask(B, T, g)
    labels = torch.where(mask, torch.randint(V, (B, T), generator=g), -100)
    return sft_loss, [torch.randn(B, T, V, generator=g)], lambda logits: (logits, labels, mask)


def bt_case(g):
    chosen, rejected = torch.randn(B, generator=g), torch.randn(B, generator=g)
    return bradley_terry_loss, [chosen, rejected], lambda c, r: (c, r, torch.rand(B, generator=g))


def dpo_case(loss_type):
    def make(g):
        logps = [-torch.rand(B, generator=g) * 20 for _ in range(4)]
        return dpo_loss, logps[:2], lambda pc, pr: (pc, pr, logps[2], logps[3], 0.1, loss_type, 0.0)

    return make


def ppo_case(g):
    mask = awkward_mask(B, T, g)
    old = -torch.rand(B, T, generator=g)
    logp = poison_padding(old + 0.3 * torch.randn(B, T, generator=g), mask)
    advantages = poison_padding(torch.randn(B, T, generator=g), mask, float("nan"))
    return ppo_clip_loss, [logp], lambda logp: (logp, old, advantages, mask, 0.2)


def value_case(g):
    mask = awkward_mask(B, T, g)
    old = torch.randn(B, T, generator=g)
    values = poison_padding(old + torch.randn(B, T, generator=g), mask)
    returns = poison_padding(torch.randn(B, T, generator=g), mask, float("nan"))
    return value_loss_clipped, [values], lambda values: (values, old, returns, mask, 0.2)


CASES = {
    "sft": sft_case,
    "bradley_terry": bt_case,
    "dpo_sigmoid": dpo_case("sigmoid"),
    "ipo": dpo_case("ipo"),
    "ppo_clip": ppo_case,
    "value_clipped": value_case,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_is_a_scalar_with_finite_gradients_on_its_inputs_even_with_poisoned_padding(generator, name):
    loss_fn, leaves, build_args = CASES[name](generator)
    leaves = [leaf.clone().requires_grad_(True) for leaf in leaves]
    loss, _ = loss_fn(*build_args(*leaves))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is not None
        assert torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_stats_are_detached_zero_dim_tensors(generator, name):
    loss_fn, leaves, build_args = CASES[name](generator)
    leaves = [leaf.clone().requires_grad_(True) for leaf in leaves]
    _, stats = loss_fn(*build_args(*leaves))
    assert stats
    for key, value in stats.items():
        assert isinstance(value, torch.Tensor), key
        assert value.dim() == 0, key
        assert not value.requires_grad and value.grad_fn is None, key


def test_every_function_runs_on_the_meta_device_so_none_copies_to_the_host():
    # Meta tensors have no data: any .item(), .cpu(), float(tensor) or bool(tensor) raises.
    meta = torch.device("meta")
    logits = torch.empty(B, T, V, device=meta, dtype=torch.bfloat16)
    labels = torch.empty(B, T, dtype=torch.long, device=meta)
    mask = torch.empty(B, T, dtype=torch.bool, device=meta)
    x, r = torch.empty(B, T, device=meta), torch.empty(B, device=meta)
    outputs = [
        sft_loss(logits, labels, mask)[0],
        entropy_from_logits(logits),
        masked_whiten(x, mask),
        bradley_terry_loss(r, r, r)[0],
        dpo_loss(r, r, r, r, 0.1)[0],
        dpo_loss(r, r, r, r, 0.1, "ipo")[0],
        *gae(x, x, mask, 1.0, 0.95),
        ppo_clip_loss(x, x, x, mask, 0.2)[0],
        value_loss_clipped(x, x, x, mask, 0.2)[0],
        explained_variance(x, x, mask),
        per_token_rewards(r, x, x, mask, 0.1, "k3"),
    ]
    assert all(out.device == meta for out in outputs)
    assert outputs[0].dtype == torch.float32  # bf16 logits are upcast, not kept
