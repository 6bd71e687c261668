"""Direct preference optimisation: fit the policy to preference pairs without a reward model.

One function, ``train_dpo``, read top to bottom: tokenise the pairs, take the SFT
reference's log-probs of every chosen and rejected response ONCE (no grad, each
distinct response once, shortest first), then the shared epoch loop
(``alignops.training.common.train_epochs``) with DPO's own loss: a batch's chosen and
rejected rows in one forward, completion-only log-probs, ``alignops.core.dpo_loss``
(sigmoid DPO of Rafailov et al. 2023 or IPO of Azar et al. 2023, optionally RPO's NLL
term). Metrics go to the ``log`` callable. Batches keep a prompt's pairs together and
similar lengths together (``pair_batches``), so a step scores each distinct response
once and little of it is padding.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.core.logprobs import sequence_logprobs
from alignops.core.losses import dpo_loss
from alignops.models.chat import Renderer
from alignops.models.collate import Batch, select_rows
from alignops.models.config import ModelConfig
from alignops.training.accelerator import enable_gradient_checkpointing, is_sharded, make_accelerator
from alignops.training.batching import GroupedBatches
from alignops.training.checkpoints import Checkpoints
from alignops.training.common import LogFn, Stats, train_epochs
from alignops.training.dpo_config import DPOConfig
from alignops.training.lora import ADAPTER_FOLDER, add_adapters, lora_config, merged
from alignops.training.optim import make_optimizer
from alignops.training.ranks import prepare_for_epochs, shard_batches

MODEL_INPUTS = ("input_ids", "attention_mask")
# dpo_loss's stats, plus the policy's own log-probs: both falling is DPO's known drift
# away from the data, and the first sign of collapse.
STAT_NAMES = (
    "loss/dpo",
    "loss/nll",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


class PreferencePairs(NamedTuple):
    """Comparisons in columns: ``chosen[i]`` was preferred to ``rejected[i]`` as a reply to ``prompts[i]``."""

    prompts: Sequence[str]
    """Canonical prompts (rendered by ``Renderer.for_model`` when tokenising)."""
    chosen: Sequence[str]
    rejected: Sequence[str]


def tokenize_pairs(tokenizer: PreTrainedTokenizerBase, pairs: PreferencePairs, model_config: ModelConfig) -> Batch:
    """2N right-padded rows, rendered as SFT renders them: rows ``[:N]`` chosen, ``[N:]`` rejected."""
    return Renderer.for_model(model_config, tokenizer).tokenize_pairs(
        list(pairs.prompts),
        list(pairs.chosen),
        list(pairs.rejected),
        model_config.max_prompt_tokens,
        model_config.max_response_tokens,
    )


def pair_rows(pair_index: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Row numbers of pairs ``pair_index`` (b,) in a 2N-row batch: their chosen rows, then their rejected rows."""
    return torch.cat([pair_index, pair_index + n_pairs])  # (2b,)


def completion_logprobs(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(response | prompt) of every row, (R,) summed and (R,) per completion token."""
    logits = model(**{k: batch[k] for k in MODEL_INPUTS}, use_cache=False).logits  # (R, T, V)
    summed = sequence_logprobs(logits, batch["input_ids"], batch["completion_mask"])  # (R,)
    n_tokens = batch["completion_mask"][:, 1:].sum(-1).clamp_min(1)  # what average=True divides by
    return summed, summed / n_tokens


def distinct_rows(rows: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): a row number of each distinct row (U,), and each row's distinct row (R,).

    Rows are the same when their tokens and completion masks are. K-wise rankings
    repeat every response in K - 1 pairs, and a model need score each only once.
    """
    key = torch.cat([rows["input_ids"], rows["completion_mask"]], dim=1)  # (R, 2T)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)  # (U, 2T), (R,)
    n_rows = len(inverse)
    first = torch.full((len(distinct),), n_rows).scatter_reduce(0, inverse, torch.arange(n_rows), "amin")
    return first, inverse


@torch.no_grad()
def reference_logprobs(
    reference: PreTrainedModel,
    rows: Batch,
    batch_size: int,
    average: bool,
    device: torch.device,
    shard: tuple[int, int] = (0, 1),
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lockstep: bool = False,
) -> torch.Tensor:
    """The reference's completion log-probs of every row, (R,) on the CPU, one no-grad pass.

    Each distinct row is scored once, shortest first and ``batch_size`` at a time, so
    each batch is cut to its own longest row. With ``shard = (rank, processes)`` a rank
    scores every processes-th batch and ``all_reduce_sum`` (over the ranks) gives each
    rank every row: a row is scored by one rank and is 0 on the others, so the sum is
    exact. ``reference`` must then be the bare model (no DDP: ranks make different
    numbers of forward passes), unless ``lockstep``: a model sharded between the ranks
    (FSDP, DeepSpeed ZeRO-3) gathers its weights in every forward, so every rank makes as many passes as the
    busiest one, a rank short of batches scoring its first one again and dropping the result.
    """
    rank, processes = shard
    was_training = reference.training
    reference.eval()
    first, inverse = distinct_rows(rows)
    order = first[rows["attention_mask"][first].sum(1).argsort()]  # (U,) shortest first
    logps = torch.zeros(len(inverse))
    chunks = order.split(batch_size)
    mine = list(chunks[rank::processes])
    fillers = len(chunks[::processes]) - len(mine) if lockstep else 0  # the first rank has the most
    for i, chunk in enumerate(mine + [chunks[0]] * fillers):
        batch = {name: tensor.to(device) for name, tensor in select_rows(rows, chunk).items()}
        summed, per_token = completion_logprobs(reference, batch)
        if i < len(mine):
            logps[chunk] = (per_token if average else summed).float().cpu()
    reference.train(was_training)
    if all_reduce_sum is not None:
        logps = all_reduce_sum(logps)
    return logps[first][inverse]


def pair_batches(rows: Batch, batch_size: int, seed: int) -> GroupedBatches:
    """Batches of the pairs of a 2N-row batch from ``tokenize_pairs``: a prompt's pairs
    together, in a shuffled order, and similar lengths together.

    A step's cost is its distinct rows times their padded width. Pairs of one prompt
    share responses (a K-wise ranking is K(K-1)/2 pairs of K responses), so keeping a
    prompt's pairs in one batch lets the step score each response once. Within windows
    of 16 batches, prompts are ordered by their longest pair, so little of a batch is
    padding. With one pair per prompt (HH-RLHF) this is plain length grouping.
    """
    return GroupedBatches(prompt_ids(rows), batch_size, seed, shuffle_within=True, lengths=pair_lengths(rows))


def pair_lengths(rows: Batch) -> torch.Tensor:
    """(N,) tokens in the longer of each pair's two rows: the width the pair needs in a batch."""
    chosen_len, rejected_len = rows["attention_mask"].sum(1).chunk(2)
    return torch.maximum(chosen_len, rejected_len)


def prompt_ids(rows: Batch) -> torch.Tensor:
    """(N,) an id per distinct prompt (its tokens), from the chosen rows of a 2N-row batch."""
    chosen_ids, _ = rows["input_ids"].chunk(2)
    chosen_completion, _ = rows["completion_mask"].chunk(2)
    prompt_tokens = torch.where(chosen_completion.bool(), -1, chosen_ids)  # (N, T), completion blanked out
    return torch.unique(prompt_tokens, dim=0, return_inverse=True)[1]


def _pair_loader(rows: Batch, ref_logps: torch.Tensor, batches: Iterable[list[int]]) -> DataLoader:
    """Batches of b pairs: their distinct token rows, ``pair_rows`` (2b,) locating each pair's
    chosen (first b) and rejected (last b) row among them, and the 2b reference log-probs."""
    n_pairs = rows["input_ids"].shape[0] // 2

    def collate(pair_index: list[int]) -> Batch:
        index = pair_rows(torch.as_tensor(pair_index), n_pairs)  # (2b,)
        first, inverse = distinct_rows({name: tensor[index] for name, tensor in rows.items()})
        return {**select_rows(rows, index[first]), "pair_rows": inverse, "ref_logps": ref_logps[index]}

    return DataLoader(range(n_pairs), batch_sampler=batches, collate_fn=collate)


def _as_reference(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """The reference: with LoRA, the model with its adapters disabled; else the model as it is
    (before its first update the policy is the reference)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else contextlib.nullcontext()


def _disable_dropout(model: torch.nn.Module) -> None:
    """Dropout would make π differ from π_ref before any update and add noise to every margin (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _pair_loss(model: PreTrainedModel, batch: Batch, config: DPOConfig) -> tuple[torch.Tensor, Stats]:
    """DPO loss (+ RPO's NLL) and stats of a batch of pairs, chosen and rejected in one forward
    of their distinct rows."""
    summed, per_token = completion_logprobs(model, batch)  # (U,), (U,)
    logps = (per_token if config.average_logprobs else summed)[batch["pair_rows"]]  # (2b,)
    chosen, rejected = logps.chunk(2)  # (b,), (b,)
    ref_chosen, ref_rejected = batch["ref_logps"].chunk(2)
    loss, stats = dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, config.beta, config.loss_type, config.label_smoothing
    )
    # RPO (Pang et al. 2024): the chosen responses' per-token NLL keeps their likelihood from
    # sinking along with the rejected ones'.
    nll = -per_token[batch["pair_rows"]].chunk(2)[0].mean()
    if config.rpo_alpha:
        loss = loss + config.rpo_alpha * nll
    return loss, {
        **stats,
        "loss/nll": nll.detach(),
        "logps/chosen": chosen.detach().mean(),
        "logps/rejected": rejected.detach().mean(),
    }


@torch.no_grad()
def evaluate_dpo(
    model: PreTrainedModel, loader: DataLoader, config: DPOConfig, accelerator: Accelerator
) -> dict[str, float]:
    """Held-out DPO ``loss``, preference accuracy and margin of the implicit reward, pair-weighted."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, device=accelerator.device)  # (loss, accuracy, margin) x pairs, pairs
    for batch, counted in shard_batches(loader, accelerator):  # counted 0: a filler batch
        loss, stats = _pair_loss(model, batch, config)
        n_pairs = batch["ref_logps"].shape[0] // 2
        totals += counted * n_pairs * torch.stack(
            [loss, stats["rewards/accuracies"], stats["rewards/margins"], loss.new_ones(())]
        )
    model.train(was_training)
    loss_sum, accuracy_sum, margin_sum, n_pairs = accelerator.reduce(totals, reduction="sum").tolist()
    n_pairs = max(n_pairs, 1.0)
    return {
        "loss": loss_sum / n_pairs,
        "rewards/accuracies": accuracy_sum / n_pairs,
        "rewards/margins": margin_sum / n_pairs,
    }


def train_dpo(
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_pairs: PreferencePairs,
    heldout_pairs: PreferencePairs | None,
    model_config: ModelConfig,
    config: DPOConfig,
    log: LogFn,
    checkpoint_dir: str | None = None,
) -> PreTrainedModel:
    """Optimise a copy of ``sft_model`` on ``train_pairs`` against ``sft_model`` as reference.

    The reference log-probs of every pair (train and held-out) are taken once, before
    the first step, from the policy while it still equals ``sft_model``; no reference
    model is called after that, and ``sft_model`` itself is never modified. Held-out
    metrics come from ``heldout_pairs`` every ``config.eval_every`` steps (None or empty:
    none). Checkpoints go to ``checkpoint_dir`` every ``config.checkpoint_every`` steps.
    """
    if not len(train_pairs.prompts):
        raise ValueError("dpo: no training pairs")
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum, config.seed,
                                   batch_size=config.batch_size, max_grad_norm=config.max_grad_norm)
    started = time.perf_counter()
    average = config.average_logprobs

    # The policy starts as a copy of the SFT model, so before its first update it IS the
    # reference: every pair's reference log-probs come from it now, once, and no second
    # model is ever held. ``sft_model`` itself is left untouched.
    policy = copy.deepcopy(sft_model)
    _disable_dropout(policy)
    enable_gradient_checkpointing(policy, config.gradient_checkpointing)
    adapters = lora_config(config.lora)
    if adapters is not None:
        policy = add_adapters(policy, adapters)  # only the adapters train
    train_rows = tokenize_pairs(tokenizer, train_pairs, model_config)  # 2N rows
    checkpoints = Checkpoints(accelerator, checkpoint_dir, "dpo", config, model_config, train_rows, policy)
    optimizer = make_optimizer(policy, config)
    policy, optimizer = accelerator.prepare(policy, optimizer)  # forward under the run's precision
    # the reference pass is shared out between the ranks, on the bare model (under the run's precision)
    shard = (accelerator.process_index, accelerator.num_processes)
    gather = None
    if accelerator.num_processes > 1:
        gather = lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()  # noqa: E731
    reference = accelerator.unwrap_model(policy)  # keeps the precision's autocast, drops DDP
    lockstep = is_sharded(accelerator)
    with _as_reference(reference):
        ref_train = reference_logprobs(reference, train_rows, 2 * config.ref_batch_size, average, accelerator.device,
                                       shard, gather, lockstep)
    train_batches = pair_batches(train_rows, config.batch_size, config.seed)  # reshuffled every epoch
    train_loader = prepare_for_epochs(accelerator, _pair_loader(train_rows, ref_train, train_batches))
    eval_loader = None
    if heldout_pairs is not None and len(heldout_pairs.prompts):
        eval_rows = tokenize_pairs(tokenizer, heldout_pairs, model_config)
        with _as_reference(reference):
            ref_eval = reference_logprobs(reference, eval_rows, 2 * config.ref_batch_size, average,
                                          accelerator.device, shard, gather, lockstep)
        eval_batches = list(pair_batches(eval_rows, config.eval_batch_size, config.seed))  # fixed
        eval_loader = _pair_loader(eval_rows, ref_eval, eval_batches)  # sharded by evaluate_dpo
    log({"dpo/reference_s": time.perf_counter() - started}, 0)
    trained = train_epochs(
        accelerator,
        policy,
        optimizer,
        train_loader,
        config,
        "dpo",
        lambda batch: _pair_loss(policy, batch, config),
        log,
        averaged=STAT_NAMES,
        weight=lambda batch, stats: 1,  # each micro-batch counts once: a mean of batch means
        throughput=("pairs", lambda batch: batch["ref_logps"].shape[0] // 2),
        postfix={"loss": "loss/dpo", "acc": "rewards/accuracies"},
        evaluate=None if eval_loader is None else lambda: evaluate_dpo(policy, eval_loader, config, accelerator),
        checkpoints=checkpoints,
        extra_metrics=lambda: {"dpo/elapsed_s": time.perf_counter() - started},
    )
    adapter_dir = Path(checkpoint_dir) / ADAPTER_FOLDER if checkpoint_dir and adapters is not None else None
    return merged(trained, adapter_dir, accelerator.is_main_process)
