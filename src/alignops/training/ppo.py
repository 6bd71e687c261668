"""RLHF with PPO: sample from the policy, score with the reward model, optimise against a KL leash.

One function, ``train_ppo``, read top to bottom like CleanRL's ``ppo.py``: per
iteration a rollout (sample, log-probs under policy and reference, reward-model
scores, per-token KL-penalised rewards), advantages (GAE, whitened), then epochs x
minibatches of the clipped policy and value losses, then diagnostics. Ziegler et al.
2019, Stiennon et al. 2020, and the details of Huang et al. 2024. The math is
``alignops.core``'s; metrics go to the ``log`` callable.

With ``lora`` the policy trains adapters only and its reference is itself with the
adapters disabled; with ``gradient_checkpointing`` the update (and only the update) runs
in train mode, every dropout probability zeroed.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.core import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    masked_whiten,
    per_token_rewards,
    ppo_clip_loss,
    selective_log_softmax,
    value_loss_clipped,
)
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig, sample_responses, trim_rows
from alignops.models.loading import place
from alignops.models.value_head import CRITICS, response_forward
from alignops.training.accelerator import enable_gradient_checkpointing, make_accelerator
from alignops.training.checkpoints import Checkpoints
from alignops.training.common import LogFn, check_finite, gc_frozen, progress_bar
from alignops.training.loop_state import Recorder, restore_history
from alignops.training.lora import ADAPTER_FOLDER, add_adapters, lora_config, merged
from alignops.training.optim import make_scheduler
from alignops.training.ppo_config import PPOConfig
from alignops.training.ptx import Demonstrations, ptx_loss
from alignops.training.ranks import global_mean
from alignops.training.snapshots import Snapshots

KL_CONTROLLERS: dict[str, Callable[[PPOConfig], FixedKLController | AdaptiveKLController]] = {
    "fixed": lambda c: FixedKLController(c.kl_coef),
    "adaptive": lambda c: AdaptiveKLController(c.kl_coef, c.kl_target, c.kl_horizon),
}
# Averaged over the minibatches of an iteration, in this order.
UPDATE_STATS = ("loss/policy", "loss/value", "policy/approxkl", "policy/clipfrac", "val/clipfrac", "val/vpred")
# Then these, per iteration. ``objective/kl`` and ``objective/entropy`` are per response
# (summed over its tokens, averaged over episodes), as the KL penalty is.
DIAGNOSTICS = (
    *UPDATE_STATS,
    "objective/scores",
    "objective/kl",
    "objective/entropy",
    "objective/rlhf_reward",
    "val/explained_variance",
    "ppo/mean_response_length",
    "ppo/eos_rate",
    "ppo/grad_norm",
)
ROLLOUT_KEYS = ("query_ids", "query_mask", "response_ids", "response_mask")


class Scorer(Protocol):
    """What PPO needs of a reward model (``alignops.models.reward.RewardModel``)."""

    def score(
        self, prompts: list[str], responses: list[str], batch_size: int = ..., normalise: bool = ...
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class PPOResult:
    policy: PreTrainedModel
    """The trained policy: a plain causal LM (the value head or critic stays behind)."""
    samples: list[dict[str, Any]]
    """Rollout episodes kept every ``sample_every`` iterations: step, prompt, response, score."""
    snapshots: dict[int, Path]
    """The policy's snapshot folder by iteration, every ``snapshot_every`` before the last
    (``alignops.training.snapshots``; none without a checkpoint folder)."""


class PromptBatches:
    """Index batches (batch_size,) walking seeded permutations of the prompts, for ever: every
    prompt is visited once before any is repeated. ``state`` (the rest of the current
    permutation) with the generator's own state places a resumed run at the same prompts."""

    def __init__(self, n_prompts: int, batch_size: int, generator: torch.Generator) -> None:
        self.n_prompts, self.batch_size, self.generator = n_prompts, batch_size, generator
        self.order = torch.empty(0, dtype=torch.long)  # (n,) what is left of the permutations drawn

    def __iter__(self) -> PromptBatches:
        return self

    def __next__(self) -> torch.Tensor:
        while len(self.order) < self.batch_size:
            self.order = torch.cat([self.order, torch.randperm(self.n_prompts, generator=self.generator)])
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return batch


@torch.no_grad()
def _rollout_forward(
    policy: torch.nn.Module,
    reference: PreTrainedModel,
    rollout: dict[str, torch.Tensor],
    widths: torch.Tensor,
    chunk: int,
    temperature: float,
    as_reference: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, ref_logprobs, values, entropy), each (B, R); past a row's response they
    are filler (every consumer masks them). ``reference`` is called inside ``as_reference()``
    (with LoRA: the policy's trunk, its adapters disabled).

    Rows go through in chunks of ``chunk`` sorted by response length (order does not
    matter without gradients), each chunk trimmed to its own widths.
    """
    batch, width = rollout["response_ids"].shape
    device = rollout["response_ids"].device
    outputs = [torch.zeros(batch, width, device=device) for _ in range(4)]
    for rows in widths[:, 1].argsort(descending=True).split(chunk):
        trimmed, w = trim_rows(rollout, rows, widths)
        logits, values = policy(**trimmed)  # (b, w, V), (b, w)
        logits = logits.float() / temperature  # upcast first: bf16 logits / T would round twice
        with as_reference():
            ref_logits = response_forward(reference, **trimmed)[0].float() / temperature
        pieces = (
            selective_log_softmax(logits, trimmed["response_ids"]),
            selective_log_softmax(ref_logits, trimmed["response_ids"]),
            values.float(),
            entropy_from_logits(logits),
        )
        for output, piece in zip(outputs, pieces, strict=True):
            output[rows.to(device), :w] = piece.float()
    return tuple(outputs)


def _dropout_off(model: torch.nn.Module) -> None:
    """Every dropout probability in ``model`` set to 0: its ``nn.Dropout`` modules (TRL's
    ``disable_dropout_in_model``) and the float ``*dropout`` attributes that attention reads in
    train mode only (Llama's ``attention_dropout``). In train mode the model then computes
    what it computes in eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def _scorer_state(reward_model: Scorer) -> tuple[Any, ...]:
    """What decides a reward model's scores, for the checkpoint's fingerprint: its weights and
    normalisation (``RewardModel``; an ensemble's members, penalty and normalisation), or the
    scorer itself (a test's plain module)."""
    members = getattr(reward_model, "members", None)
    if members is not None:
        return (
            *(state for member in members for state in _scorer_state(member)),
            reward_model.uncertainty_penalty, reward_model.mean, reward_model.std,
        )
    model = getattr(reward_model, "model", None)
    if model is None:
        return (reward_model,) if isinstance(reward_model, torch.nn.Module) else ()
    return model, getattr(reward_model, "mean", 0.0), getattr(reward_model, "std", 1.0)


@gc_frozen
def train_ppo(
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: Scorer,
    prompts: Sequence[str],
    model_config: ModelConfig,
    config: PPOConfig,
    generation: GenerationConfig,
    log: LogFn,
    checkpoint_dir: str | None = None,
    demonstrations: tuple[Sequence[str], Sequence[str]] | None = None,
) -> PPOResult:
    """Optimise a copy of ``sft_model`` against ``reward_model`` on ``prompts`` (canonical text).

    ``sft_model`` is not modified: the policy and the frozen reference are copies of it
    (with ``config.lora``, the reference is the policy with its adapters disabled).
    The reward model scores decoded text (it may use another tokenizer) and renders it
    its own way; the policy's rollouts render prompts with ``sample_responses``.
    ``demonstrations`` (prompts, replies) feed ``config.ptx_coef``'s SFT loss (``alignops.training.ptx``).
    """
    if not prompts:
        raise ValueError("ppo: no prompts to roll out on")
    ptx = None
    if config.ptx_coef > 0:
        ptx = Demonstrations(tokenizer, *(demonstrations or ([], [])), model_config, config.seed)
    accelerator = make_accelerator(config.mixed_precision, 1, config.seed)
    device = accelerator.device
    checkpoints = Checkpoints(  # what a resumable checkpoint must have started from
        accelerator, checkpoint_dir, "ppo", config, model_config, generation, list(prompts), sft_model,
        *_scorer_state(reward_model), *([ptx.rows] if ptx is not None else []),
    )
    snapshots = Snapshots(accelerator, checkpoint_dir, "ppo", config.snapshot_every, checkpoints.fingerprint)
    # The policy and its critic (a value head created after seeding, or a copy of the reward model).
    trunk = copy.deepcopy(sft_model)
    enable_gradient_checkpointing(trunk, config.gradient_checkpointing)
    adapters = lora_config(config.lora)
    # peft injects the adapters into ``trunk`` itself and freezes its other weights; the
    # wrapper ``adapted`` is kept to disable, merge and save them.
    adapted = add_adapters(trunk, adapters) if adapters is not None else None
    policy = CRITICS[config.critic](trunk, tokenizer, reward_model)
    if config.gradient_checkpointing:
        critic = getattr(policy, "critic", None)  # a separate critic is checkpointed too
        if critic is not None:
            enable_gradient_checkpointing(critic, True)
        _dropout_off(policy)  # the update runs in train mode: see the loop
    if adapted is None:
        reference = copy.deepcopy(sft_model).requires_grad_(False).eval().to(device)
        as_reference = contextlib.nullcontext
    else:  # the SFT model is the policy with its adapters disabled: no second copy
        reference, as_reference = trunk, adapted.disable_adapter
    place([reward_model], device)  # score on the accelerator: RewardModel.score follows its model
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in policy.policy.parameters() if p.requires_grad], "lr": config.learning_rate},
            {"params": policy.value_parameters(), "lr": config.value_learning_rate},
        ],
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    minibatches_per_epoch = config.rollout_batch_size // config.minibatch_size
    scheduler = make_scheduler(
        optimizer, config.schedule, config.warmup_steps, config.steps * config.ppo_epochs * minibatches_per_epoch
    )
    accelerator.register_for_checkpointing(scheduler)
    kl_controller = KL_CONTROLLERS[config.kl_controller](config)

    prompts = list(prompts)
    seeds = torch.Generator().manual_seed(config.seed)
    global_batch = config.rollout_batch_size * accelerator.num_processes
    batches = PromptBatches(len(prompts), global_batch, seeds)
    rollout_seeds = torch.randint(2**31 - 1, (config.steps,), generator=seeds).tolist()
    samples: list[dict[str, Any]] = []
    recorded, start, elapsed = Recorder(log), 0, 0.0
    resumed = checkpoints.resume()
    if resumed is not None:  # the same prompts, minibatches, β and history as an uninterrupted run
        start, state = resumed.step, resumed.state
        seeds.set_state(state["generator"])
        batches.order = state["prompt_order"]
        kl_controller.value = state["kl_coef"]
        samples, elapsed = state["samples"], state["elapsed_s"]
        recorded.rows = restore_history(log, state["history"])
        if ptx is not None:
            ptx.generator.set_state(state["ptx_generator"])
    log = recorded
    # Dropout stays off throughout (Huang et al. 2024): with it, the log-probs of an
    # unchanged policy would differ between rollout and update, and so would the ratio.
    # Gradient checkpointing needs train mode in the update, where ``_dropout_off`` has
    # zeroed every dropout probability; rollouts stay in eval mode, with the KV cache.
    policy.eval()
    bar = progress_bar(accelerator, config.steps, "ppo", initial=start)
    loop_start = time.perf_counter() - elapsed
    for step in range(start + 1, config.steps + 1):
        # 1. Rollout: sample responses, then score them.
        step_start = time.perf_counter()
        index = next(batches)[accelerator.process_index :: accelerator.num_processes].tolist()
        batch_prompts = [prompts[i] for i in index]
        with accelerator.autocast():
            out = sample_responses(
                accelerator.unwrap_model(policy).policy,
                tokenizer,
                batch_prompts,
                model_config,
                generation,
                seed=rollout_seeds[step - 1] + accelerator.process_index,
                batch_size=config.generation_batch_size,
                max_new_tokens=config.max_new_tokens,
            )
        generation_s = time.perf_counter() - step_start
        rollout = {k: getattr(out, k).to(device) for k in ROLLOUT_KEYS}
        widths = torch.stack([out.query_mask.sum(1), out.response_mask.sum(1)], dim=1)  # (B, 2) on the CPU
        mask = rollout["response_mask"].bool()  # (B, R)
        with accelerator.autocast():
            logprobs, ref_logprobs, values, entropy = _rollout_forward(
                policy, reference, rollout, widths, config.minibatch_size, generation.temperature, as_reference
            )
        scores = reward_model.score(batch_prompts, out.texts, batch_size=config.reward_batch_size, normalise=True)
        scores = scores.to(device=device, dtype=torch.float32)  # (B,)
        ended_with_eos = out.ended_with_eos.to(device)  # (B,)
        if config.missing_eos_score is not None:
            scores = torch.where(ended_with_eos, scores, torch.full_like(scores, config.missing_eos_score))

        # 2. Advantages: KL-penalised per-token rewards, GAE, whitening.
        kl_coef = kl_controller.value
        rewards = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, config.kl_estimator)  # (B, R)
        advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)  # (B, R)
        global_sum = (lambda t: accelerator.reduce(t, reduction="sum")) if accelerator.num_processes > 1 else None
        advantages = masked_whiten(advantages, mask, all_reduce_sum=global_sum)

        # 3. Optimise: epochs x shuffled minibatches of the clipped policy and value losses.
        update_stats, ptx_nll = [], []
        policy.train(config.gradient_checkpointing)
        for _ in range(config.ppo_epochs):
            for rows in torch.randperm(len(index), generator=seeds).split(config.minibatch_size):
                trimmed, w = trim_rows(rollout, rows, widths)
                rows = rows.to(device)
                logits, vpred = policy(**trimmed)  # (b, w, V), (b, w)
                new_logprobs = selective_log_softmax(logits.float() / generation.temperature, trimmed["response_ids"])
                rows_mask = mask[rows, :w]
                pg_loss, pg_stats = ppo_clip_loss(
                    new_logprobs, logprobs[rows, :w], advantages[rows, :w], rows_mask, config.cliprange
                )
                vf_loss, vf_stats = value_loss_clipped(
                    vpred, values[rows, :w], returns[rows, :w], rows_mask, config.cliprange_value
                )
                loss = pg_loss + config.vf_coef * vf_loss  # token means over this rank's minibatch
                check_finite(loss, "ppo", step)
                accelerator.backward(global_mean(loss, rows_mask.sum().float(), accelerator))
                if ptx is not None:  # its own forward and backward: DDP syncs each backward once
                    demo = ptx.draw(len(rows), device)
                    nll = ptx_loss(policy, demo)
                    check_finite(nll, "ppo", step)
                    accelerator.backward(config.ptx_coef * nll)
                    ptx_nll.append(nll.detach())
                grad_norm = accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                stats = pg_stats | vf_stats
                update_stats.append(torch.stack([stats[name].float() for name in UPDATE_STATS]))
        policy.eval()

        # 4. Diagnostics (in ``DIAGNOSTICS`` order), one host sync for all of them.
        kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, config.kl_estimator), 0.0).sum(1)  # (B,)
        diagnostics = torch.stack(
            [
                *torch.stack(update_stats).mean(0),
                scores.mean(),
                kl.mean(),
                torch.where(mask, entropy, 0.0).sum(1).mean(),
                rewards.sum(1).mean(),
                explained_variance(values, returns, mask),
                mask.sum(1).float().mean(),
                ended_with_eos.float().mean(),
                grad_norm.float(),
            ]
        )
        metrics = dict(zip(DIAGNOSTICS, accelerator.reduce(diagnostics, reduction="mean").tolist(), strict=True))
        if ptx is not None:
            metrics["ptx/nll"] = accelerator.reduce(torch.stack(ptx_nll).mean(), reduction="mean").item()
        kl_controller.update(metrics["objective/kl"], n_steps=global_batch)
        now = time.perf_counter()
        step_s = now - step_start
        metrics |= {
            "objective/kl_coef": kl_coef,
            "ppo/lr": scheduler.get_last_lr()[0],
            "ppo/episodes_per_s": global_batch / step_s,
            "ppo/generation_tokens_per_s": metrics["ppo/mean_response_length"] * len(index) / generation_s,
            "ppo/elapsed_s": now - loop_start,
        }
        log(metrics, step)
        bar.update(1)
        bar.set_postfix(score=f"{metrics['objective/scores']:.2f}", kl=f"{metrics['objective/kl']:.2f}")

        sample_now = step % config.sample_every == 0 or step == config.steps
        if accelerator.is_main_process and config.num_samples and sample_now:
            kept = scores[: config.num_samples].tolist()
            samples += [
                {"step": step, "prompt": p, "response": r, "score": s}
                for p, r, s in zip(batch_prompts, out.texts, kept, strict=False)  # the first num_samples
            ]
        if snapshots.due(step, config.steps):
            snapshots.save(step, adapted if adapted is not None else accelerator.unwrap_model(policy).policy)
        if checkpoints.due(step, config.steps):
            checkpoints.save(step, {
                "generator": seeds.get_state(),
                "prompt_order": batches.order,
                "kl_coef": kl_controller.value,
                "samples": samples,
                "elapsed_s": time.perf_counter() - loop_start,
                "history": recorded.rows,
                **({"ptx_generator": ptx.generator.get_state()} if ptx is not None else {}),
            })
    bar.close()
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(policy).policy
    if adapted is not None:  # merged in place: ``trained`` becomes the plain model
        adapter_dir = Path(checkpoint_dir) / ADAPTER_FOLDER if checkpoint_dir else None
        trained = merged(adapted, adapter_dir, accelerator.is_main_process)
    accelerator.free_memory()
    return PPOResult(policy=trained, samples=samples, snapshots=snapshots.written(config.steps))
