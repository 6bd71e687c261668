"""Reward-model training: a Bradley–Terry loss on preference pairs, then normalisation.

``train_reward_model`` reads top to bottom: model, data, optimiser, then the shared
epoch loop (``alignops.training.common.train_epochs``) with the reward model's own
loss: chosen and rejected replies scored in one forward pass, Bradley–Terry on them.
``normalise_reward_model`` then samples from the SFT policy and sets the reward
model's mean and std so that those samples score mean 0, std 1 (Ziegler et al. 2019).
``train_reward_models`` trains ``ensemble_size`` of them one after another (seeds
``seed``, ``seed + 1``, ...) for a ``RewardEnsemble``. Metrics go to the ``log`` callable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.core.losses import bradley_terry_loss
from alignops.models.collate import Batch, select_rows
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig, GenerationOutput, sample_responses
from alignops.models.loading import load_model
from alignops.models.reward import (
    RewardEnsemble,
    RewardModel,
    build_reward_backbone,
    member_folder,
    sequence_rewards,
)
from alignops.models.tokenizer import ensure_pad_token, load_tokenizer, resize_for_tokenizer
from alignops.training.accelerator import enable_gradient_checkpointing, make_accelerator
from alignops.training.batching import GroupedBatches
from alignops.training.checkpoints import Checkpoints
from alignops.training.common import LogFn, Stats, train_epochs
from alignops.training.lora import ADAPTER_FOLDER, add_classifier_adapters, lora_config, merged
from alignops.training.optim import make_optimizer
from alignops.training.ranks import prepare_for_epochs, shard_batches
from alignops.training.reward_config import RewardConfig

__all__ = [
    "Comparisons",
    "comparisons",
    "pretrained_reward_model",
    "normalise_reward_model",
    "policy_samples",
    "train_reward_model",
    "train_reward_models",
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
    """Held-out Bradley–Terry ``loss``, pairwise ``accuracy`` (ties count wrong) and mean ``margin``."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, device=accelerator.device)  # (loss, correct, margin) summed over pairs, pairs
    for batch, counted in shard_batches(loader, accelerator):  # counted 0: a filler batch
        r_chosen, r_rejected = pair_rewards(model, batch)
        loss, stats = bradley_terry_loss(r_chosen, r_rejected)
        n = loss.new_tensor(float(len(r_chosen)))
        totals += counted * torch.stack([loss * n, stats["reward/accuracy"] * n, stats["reward/margin"] * n, n])
    model.train(was_training)
    loss, correct, margin, n = accelerator.reduce(totals, reduction="sum").tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "accuracy": correct / n, "margin": margin / n}


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
    give ``eval/reward/accuracy`` every ``config.eval_every`` steps.
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
        batch_sampler=GroupedBatches(train.group, config.batch_size, config.seed),
        collate_fn=partial(collate_pairs, train),
    )
    eval_loader = None
    if heldout is not None:
        eval_loader = DataLoader(
            range(len(heldout)),
            batch_size=max(1, config.eval_batch_size // 2),  # two replies per pair
            collate_fn=partial(collate_pairs, heldout),
        )

    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    adapters = lora_config(config.lora)
    if adapters is not None:
        model = add_classifier_adapters(model, adapters)  # only the trunk's adapters and the head train
    checkpoints = Checkpoints(accelerator, checkpoint_dir, "reward", config, model_config, train_pairs, model)
    optimizer = make_optimizer(model, config)
    model, optimizer, train_loader = prepare_for_epochs(accelerator, model, optimizer, train_loader)

    def loss_and_stats(batch: Batch) -> tuple[torch.Tensor, Stats]:
        r_chosen, r_rejected = pair_rewards(model, batch)  # (B,), (B,)
        return bradley_terry_loss(r_chosen, r_rejected, batch["margin"] if config.margin_scale else None)

    trained = train_epochs(
        accelerator,
        model,
        optimizer,
        train_loader,
        config,
        "reward",
        loss_and_stats,
        log,
        averaged=TRAIN_METRICS,
        weight=lambda batch, stats: len(batch["margin"]),  # pair-weighted means
        throughput=("pairs", lambda batch: len(batch["margin"])),
        postfix={"loss": "loss/reward", "acc": "reward/accuracy"},
        evaluate=None if eval_loader is None else lambda: evaluate_reward(model, eval_loader, accelerator),
        checkpoints=checkpoints,
    )
    adapter_dir = Path(checkpoint_dir) / ADAPTER_FOLDER if checkpoint_dir and adapters is not None else None
    return dataclasses.replace(reward_model, model=merged(trained, adapter_dir, accelerator.is_main_process))


class MemberLog:
    """``log`` for ensemble member ``index`` > 0: its metrics as ``member_<index>/<name>``, so
    that the members' curves sit beside the first member's instead of on top of them."""

    def __init__(self, log: LogFn, index: int) -> None:
        self.log, self.prefix = log, f"member_{index}/"

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.log({self.prefix + name: value for name, value in metrics.items()}, step)


def train_reward_models(
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_pairs: pd.DataFrame,
    eval_pairs: pd.DataFrame | None,
    model_config: ModelConfig,
    config: RewardConfig,
    log: LogFn,
    checkpoint_dir: str | None = None,
) -> RewardModel | RewardEnsemble:
    """``train_reward_model``, or ``config.ensemble_size`` of them for an (un-normalised) ensemble.

    Member ``i`` is the same recipe with seed ``config.seed + i`` (a new head and another
    batch order: Coste et al. 2024's ensembles differ in just that), checkpointed into
    ``<checkpoint_dir>/member-<i>``; a killed run resumes the member it was training, and
    the finished ones from their last checkpoint.
    """
    if config.ensemble_size == 1:
        return train_reward_model(
            sft_model, tokenizer, train_pairs, eval_pairs, model_config, config, log, checkpoint_dir
        )
    members = tuple(
        train_reward_model(
            sft_model, tokenizer, train_pairs, eval_pairs, model_config,
            dataclasses.replace(config, seed=config.seed + index),
            log if index == 0 else MemberLog(log, index),
            str(member_folder(checkpoint_dir, index)) if checkpoint_dir else None,
        )
        for index in range(config.ensemble_size)
    )
    return RewardEnsemble(members, uncertainty_penalty=config.uncertainty_penalty)


def pretrained_reward_model(path: str, model_config: ModelConfig) -> RewardModel:
    """A trained one-output sequence classifier from elsewhere (a local folder or hub id), with
    its own tokenizer, showing prompts in the run's format; un-normalised (mean 0, std 1).

    Loaded without resizing its head: a checkpoint with another number of labels is
    refused rather than given a fresh, untrained head.
    """
    model = load_model(path, "sequence_classification", model_config.trust_remote_code, model_config.dtype)
    if model.config.num_labels != 1:
        raise ValueError(
            f"{path} has {model.config.num_labels} outputs; a reward model has one (a scalar score per reply)"
        )
    model.config.use_cache = False
    tokenizer = load_tokenizer(path, trust_remote_code=model_config.trust_remote_code)
    ensure_pad_token(tokenizer)
    return RewardModel(
        model=resize_for_tokenizer(model, tokenizer),
        tokenizer=tokenizer,
        prompt_template=model_config.prompt_template,
        response_prefix=model_config.response_prefix,
        max_prompt_tokens=model_config.max_prompt_tokens,
        max_response_tokens=model_config.max_response_tokens,
    )


def policy_samples(
    policy: PreTrainedModel,
    policy_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    model_config: ModelConfig,
    config: RewardConfig,
    generation: GenerationConfig,
) -> tuple[list[str], GenerationOutput]:
    """``config.norm_samples`` canonical prompts, drawn (seeded) from the distinct ``prompts``
    (cycling when there are fewer), and the policy's sampled replies to them."""
    distinct = list(dict.fromkeys(prompts))
    if not distinct:
        raise ValueError("reward: normalisation needs at least one prompt")
    draw = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(config.seed))  # (P,)
    repeats = math.ceil(config.norm_samples / len(distinct))
    picked = [distinct[i] for i in draw.repeat(repeats)[: config.norm_samples].tolist()]
    samples = sample_responses(
        policy,
        policy_tokenizer,
        picked,
        model_config,
        generation,
        seed=config.seed,
        batch_size=config.norm_batch_size,
        max_new_tokens=config.norm_max_new_tokens,
    )
    return picked, samples


def normalise_reward_model(
    reward_model: RewardModel | RewardEnsemble,
    policy: PreTrainedModel,
    policy_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    model_config: ModelConfig,
    config: RewardConfig,
    generation: GenerationConfig,
    log: LogFn,
    step: int = 0,
) -> RewardModel | RewardEnsemble:
    """``reward_model`` with mean/std set so the policy's samples score mean 0, std 1.

    Ziegler et al. 2019 (lm-human-preferences ``train_reward``): a Bradley–Terry reward's
    offset and scale are arbitrary, so they are fixed on the distribution PPO starts
    from (``policy_samples``). An ensemble's members are normalised first, each on the
    same samples (their spread is then in one unit), and then their combined score.
    ``config.norm_samples == 0`` leaves raw rewards (0, 1).
    """
    if config.norm_samples == 0:
        return reward_model.with_normalisation(0.0, 1.0)
    picked, samples = policy_samples(policy, policy_tokenizer, prompts, model_config, config, generation)
    metrics = {"reward/norm_eos_share": float(samples.ended_with_eos.float().mean())}
    if isinstance(reward_model, RewardEnsemble):
        # each member scores the samples once; its normalised scores are then what it would score
        members, member_scores = [], []
        for member in reward_model.members:
            raw = member.score(picked, samples.texts, batch_size=config.eval_batch_size, normalise=False)  # (N,)
            member = member.with_normalisation(*_moments(raw))
            members.append(member)
            member_scores.append(member.normalised(raw))
        reward_model = dataclasses.replace(reward_model, members=tuple(members))
        scores = torch.stack(member_scores)  # (M, N)
        metrics["reward/norm_member_std"] = float(reward_model.spread(scores).mean())  # how far apart they start
        raw = reward_model.combine(scores)  # (N,)
    else:
        raw = reward_model.score(picked, samples.texts, batch_size=config.eval_batch_size, normalise=False)
    mean, std = _moments(raw)
    log({"reward/norm_mean": mean, "reward/norm_std": std, **metrics}, step)
    return reward_model.with_normalisation(mean, std)


def _moments(raw: torch.Tensor) -> tuple[float, float]:
    """(mean, std) of raw scores of SFT samples: what normalising subtracts and divides by."""
    mean, std = float(raw.mean()), float(raw.std())
    if not math.isfinite(mean) or not std > 0:
        raise ValueError(f"reward: cannot normalise on SFT samples (mean {mean}, std {std})")
    return mean, std
