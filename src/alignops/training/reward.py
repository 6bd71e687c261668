"""Reward-model training: a Bradley–Terry loss on preference pairs, then normalisation.

``train_reward_model`` reads top to bottom: model, data, optimiser, then the loop
(chosen and rejected replies in one forward pass, gradient accumulation, clipping,
warm-up + decay, held-out pairwise accuracy, NaN guard, checkpoints).
``normalise_reward_model`` then samples from the SFT policy and sets the reward
model's mean and std so that those samples score mean 0, std 1 (Ziegler et al. 2019).
Metrics go to the ``log`` callable.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.core.losses import bradley_terry_loss
from alignops.models.collate import Batch, select_rows
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationOutput, generate
from alignops.models.reward import RewardModel, build_reward_backbone, sequence_rewards
from alignops.training.common import (
    LogFn,
    check_finite,
    decay_parameter_groups,
    make_accelerator,
    make_scheduler,
    progress_bar,
    evaluate_and_checkpoint,
    finish_loop,
)
from alignops.training.reward_config import RewardConfig

__all__ = [
    "Comparisons",
    "RewardConfig",
    "comparisons",
    "normalise_reward_model",
    "policy_samples",
    "train_reward_model",
]

#: ``bradley_terry_loss`` stats averaged over each logging interval.
TRAIN_METRICS = ("loss/reward", "reward/accuracy", "reward/margin", "reward/chosen", "reward/rejected")


@dataclass(frozen=True)
class Comparisons:
    """Preference pairs as indices into a table of distinct tokenised replies.

    A reply that occurs in several pairs (K-wise rankings give each reply K-1 pairs)
    is tokenised once and, within a batch, scored once.
    """

    replies: Batch
    """(U, T) right-padded ``input_ids`` and ``attention_mask`` of the distinct (prompt, reply) texts."""
    chosen: torch.Tensor
    """(B,) row of ``replies`` holding each pair's chosen reply."""
    rejected: torch.Tensor
    """(B,) row holding its rejected reply."""
    margin: torch.Tensor
    """(B,) Bradley–Terry margin (``margin_scale`` x the canonical ``margin``; 0 where unknown)."""
    group: torch.Tensor
    """(B,) labelling act (``item_id``): pairs of one ranking share it; a pair without one is its own."""

    def __len__(self) -> int:
        return len(self.chosen)


def comparisons(reward_model: RewardModel, pairs: pd.DataFrame, margin_scale: float = 0.0) -> Comparisons:
    """Tokenise a canonical preference table (``alignops.preferences.schema``) for ``reward_model``."""
    n = len(pairs)
    texts = pd.MultiIndex.from_arrays(
        [pd.concat([pairs["prompt"], pairs["prompt"]]), pd.concat([pairs["chosen"], pairs["rejected"]])]
    )
    codes, distinct = texts.factorize()  # (2B,) rows of the distinct texts
    codes = torch.as_tensor(codes, dtype=torch.long)
    replies = reward_model.tokenize(
        distinct.get_level_values(0).astype(str).tolist(), distinct.get_level_values(1).astype(str).tolist()
    )
    margin = torch.as_tensor(pairs["margin"].astype("Float64").fillna(0.0).to_numpy(dtype="float32"))
    group = pd.factorize(pairs["item_id"])[0]  # (B,) -1 where the source names no labelling act
    alone = group < 0
    group[alone] = group.max(initial=-1) + 1 + np.arange(alone.sum())  # such a pair is its own group
    group = torch.as_tensor(group, dtype=torch.long)
    return Comparisons(replies, codes[:n], codes[n:], margin_scale * margin, group)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` pair indices, whole groups in a shuffled order.

    Keeping a ranking's pairs together lets a batch score each of its replies once
    (Ouyang et al. 2022 put all K-choose-2 pairs of a ranking in one batch, which also
    keeps one reply from being fitted several times per epoch). The order is drawn
    from a generator seeded once, so a run is reproducible and each epoch differs.
    """

    def __init__(self, group: torch.Tensor, batch_size: int, seed: int) -> None:
        self._group = group
        self.batch_size = batch_size
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self._group) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n_groups = int(self._group.max()) + 1 if len(self._group) else 0
        rank = torch.randperm(n_groups, generator=self._generator)[self._group]  # (B,) shuffled group order
        order = torch.argsort(rank, stable=True)
        yield from (chunk.tolist() for chunk in order.split(self.batch_size))


def collate_pairs(data: Comparisons, pair_index: Sequence[int]) -> Batch:
    """The distinct replies of some pairs, and ``inverse`` mapping them back to rows.

    ``sequence_rewards(...)[inverse]`` is (2B,): the pairs' chosen rewards, then their
    rejected ones, in the order of ``pair_index``.
    """
    index = torch.as_tensor(pair_index, dtype=torch.long)
    rows = torch.cat([data.chosen[index], data.rejected[index]])  # (2B,)
    distinct, inverse = torch.unique(rows, return_inverse=True)
    return {**select_rows(data.replies, distinct), "inverse": inverse, "margin": data.margin[index]}


def pair_rewards(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) rewards of the chosen and of the rejected replies, from one forward pass."""
    rewards = sequence_rewards(model, batch["input_ids"], batch["attention_mask"])[batch["inverse"]]  # (2B,)
    r_chosen, r_rejected = rewards.chunk(2)
    return r_chosen, r_rejected


@torch.no_grad()
def evaluate_reward(model: PreTrainedModel, loader: DataLoader, accelerator: Accelerator) -> dict[str, float]:
    """Held-out Bradley–Terry loss, pairwise accuracy (ties count wrong) and mean margin."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, device=accelerator.device)  # (loss, correct, margin) summed over pairs, pairs
    for batch in loader:
        r_chosen, r_rejected = pair_rewards(model, batch)
        loss, stats = bradley_terry_loss(r_chosen, r_rejected)
        n = loss.new_tensor(float(len(r_chosen)))
        totals += torch.stack([loss * n, stats["reward/accuracy"] * n, stats["reward/margin"] * n, n])
    model.train(was_training)
    loss, correct, margin, n = accelerator.reduce(totals, reduction="sum").tolist()
    n = max(n, 1.0)
    return {"eval/loss": loss / n, "eval/reward_accuracy": correct / n, "eval/reward_margin": margin / n}


def train_reward_model(
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_pairs: pd.DataFrame,
    eval_pairs: pd.DataFrame | None,
    model_config: ModelConfig,
    config: RewardConfig,
    log: LogFn,
    checkpoint_dir: str | None = None,
) -> RewardModel:
    """Fit a reward model to canonical preference tables; returns it un-normalised (mean 0, std 1).

    ``sft_model``/``tokenizer`` are the policy the reward model starts from when
    ``config.base`` is ``sft`` (neither is modified). ``eval_pairs`` (may be empty)
    give ``eval/reward_accuracy`` every ``config.eval_every`` steps.
    """
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum, config.seed)
    model, rm_tokenizer = build_reward_backbone(  # after seeding: same seed, same new head
        config.base, sft_model, tokenizer, model_config.trust_remote_code, model_config.dtype
    )
    reward_model = RewardModel(
        model=model,
        tokenizer=rm_tokenizer,
        prompt_template=model_config.prompt_template,
        response_prefix=model_config.response_prefix,
        max_prompt_tokens=model_config.max_prompt_tokens,
        max_response_tokens=model_config.max_response_tokens,
    )

    # Data: each distinct reply tokenised once; batches keep a ranking's pairs together.
    train = comparisons(reward_model, train_pairs, config.margin_scale)
    if len(train) == 0:
        raise ValueError("reward: no training comparisons")
    heldout = comparisons(reward_model, eval_pairs) if eval_pairs is not None and len(eval_pairs) else None
    train_loader = DataLoader(
        range(len(train)),
        batch_sampler=GroupedBatchSampler(train.group, config.batch_size, config.seed),
        collate_fn=partial(collate_pairs, train),
    )
    eval_loader = None
    if heldout is not None:
        eval_loader = DataLoader(
            range(len(heldout)),
            batch_size=max(1, config.eval_batch_size // 2),  # two replies per pair
            collate_fn=partial(collate_pairs, heldout),
        )

    optimizer = torch.optim.AdamW(
        decay_parameter_groups(model, config.weight_decay), lr=config.learning_rate, betas=(0.9, config.adam_beta2)
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total_steps = config.max_steps or max(1, round(steps_per_epoch * config.epochs))
    scheduler = make_scheduler(optimizer, config.schedule, config.warmup_steps, total_steps)
    accelerator.register_for_checkpointing(scheduler)

    step = 0
    # TRAIN_METRICS summed over the pairs since the last log, then the number of pairs.
    interval = torch.zeros(6, device=accelerator.device)
    interval_start = time.perf_counter()
    bar = progress_bar(accelerator, total_steps, "reward")
    model.train()
    while step < total_steps:
        for batch in train_loader:
            with accelerator.accumulate(model):
                r_chosen, r_rejected = pair_rewards(model, batch)  # (B,), (B,)
                margin = batch["margin"] if config.margin_scale else None
                loss, stats = bradley_terry_loss(r_chosen, r_rejected, margin)
                check_finite(loss, "reward", step)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            n_pairs = torch.tensor(float(len(r_chosen)), device=accelerator.device)
            interval += torch.stack([*(stats[k] * n_pairs for k in TRAIN_METRICS), n_pairs])
            if not accelerator.sync_gradients:
                continue

            scheduler.step()
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total_steps:
                *sums, pairs = accelerator.reduce(interval, reduction="sum").tolist()
                metrics = {k: s / max(pairs, 1.0) for k, s in zip(TRAIN_METRICS, sums, strict=True)}
                log(
                    {
                        **metrics,
                        "reward/lr": scheduler.get_last_lr()[0],
                        "reward/grad_norm": float(grad_norm),
                        "reward/pairs_per_s": pairs / max(time.perf_counter() - interval_start, 1e-9),
                        "reward/epoch": step / steps_per_epoch,
                    },
                    step,
                )
                bar.set_postfix(loss=f"{metrics['loss/reward']:.3f}", acc=f"{metrics['reward/accuracy']:.2f}")
                interval.zero_()
                interval_start = time.perf_counter()
            evaluate = None if eval_loader is None else lambda: evaluate_reward(model, eval_loader, accelerator)
            # evaluation and checkpoints do not count towards pairs/s
            interval_start += evaluate_and_checkpoint(
                accelerator, config, "reward", step, total_steps, checkpoint_dir, evaluate, log
            )
            if step >= total_steps:
                break
    return dataclasses.replace(reward_model, model=finish_loop(accelerator, bar, model))


def policy_samples(
    policy: PreTrainedModel,
    policy_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    model_config: ModelConfig,
    config: RewardConfig,
) -> tuple[list[str], GenerationOutput]:
    """``config.norm_samples`` canonical prompts, drawn (seeded) from the distinct ``prompts``
    (cycling when there are fewer), and the policy's sampled replies to them."""
    distinct = list(dict.fromkeys(prompts))
    if not distinct:
        raise ValueError("reward: normalisation needs at least one prompt")
    draw = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(config.seed))  # (P,)
    repeats = math.ceil(config.norm_samples / len(distinct))
    picked = [distinct[i] for i in draw.repeat(repeats)[: config.norm_samples].tolist()]
    samples = generate(
        policy,
        policy_tokenizer,
        model_config.format_prompts(picked),
        max_new_tokens=config.norm_max_new_tokens,
        temperature=config.norm_temperature,
        batch_size=config.norm_batch_size,
        seed=config.seed,
        max_prompt_tokens=model_config.max_prompt_tokens,
        response_prefix=model_config.response_prefix,
    )
    return picked, samples


def normalise_reward_model(
    reward_model: RewardModel,
    policy: PreTrainedModel,
    policy_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    model_config: ModelConfig,
    config: RewardConfig,
    log: LogFn,
    step: int = 0,
) -> RewardModel:
    """``reward_model`` with mean/std set so the policy's samples score mean 0, std 1.

    Ziegler et al. 2019 (lm-human-preferences ``train_reward``): a Bradley–Terry reward's
    offset and scale are arbitrary, so they are fixed on the distribution PPO starts
    from (``policy_samples``). ``config.norm_samples == 0`` leaves raw rewards (0, 1).
    """
    if config.norm_samples == 0:
        return reward_model.with_normalisation(0.0, 1.0)
    picked, samples = policy_samples(policy, policy_tokenizer, prompts, model_config, config)
    raw = reward_model.score(picked, samples.texts, batch_size=config.eval_batch_size, normalise=False)  # (N,)
    mean, std = float(raw.mean()), float(raw.std())
    if not math.isfinite(mean) or not std > 0:
        raise ValueError(f"reward: cannot normalise on SFT samples (mean {mean}, std {std})")
    log(
        {
            "reward/norm_mean": mean,
            "reward/norm_std": std,
            "reward/norm_eos_share": float(samples.ended_with_eos.float().mean()),
        },
        step,
    )
    return reward_model.with_normalisation(mean, std)
