"""Supervised fine-tuning: teach the base model to answer like the demonstrations.

One function, ``train_sft``, read top to bottom: model, data, optimiser, then the
shared epoch loop (``alignops.training.common.train_epochs``: gradient accumulation,
clipping, warm-up + decay, held-out evaluation, NaN guard, checkpoints) with SFT's
own completion-only loss. Metrics go to the ``log`` callable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.core import sft_loss
from alignops.models.chat import Renderer
from alignops.models.collate import Batch, select_rows
from alignops.models.config import ModelConfig
from alignops.models.loading import build_causal_lm
from alignops.models.packing import pack_sequences
from alignops.training.accelerator import enable_gradient_checkpointing, make_accelerator
from alignops.training.checkpoints import Checkpoints
from alignops.training.common import LogFn, Stats, train_epochs
from alignops.training.lora import ADAPTER_FOLDER, add_adapters, lora_config, merged
from alignops.training.optim import make_optimizer
from alignops.training.ranks import prepare_for_epochs, shard_batches
from alignops.training.sft_config import SFTConfig

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def _loader(rows: Batch, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Batches as index slices of pre-tokenised tensors (no per-sample collation)."""
    n_rows = rows["input_ids"].shape[0]
    return DataLoader(
        range(n_rows),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=lambda index: select_rows(rows, torch.as_tensor(index)),
    )


def _forward(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Logits (B, T, V). ``use_cache=False``: packed rows are only kept apart without a cache."""
    return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).logits


@torch.no_grad()
def evaluate_sft(model: PreTrainedModel, loader: DataLoader, accelerator: Accelerator) -> dict[str, float]:
    """Held-out completion ``loss`` (token-weighted over the whole split) and its ``perplexity``."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, device=accelerator.device)  # (loss x tokens, tokens)
    for batch, counted in shard_batches(loader, accelerator):  # counted 0: a filler batch
        loss, stats = sft_loss(_forward(model, batch), batch["input_ids"], batch["completion_mask"])
        totals += counted * torch.stack([loss.float() * stats["tokens"], stats["tokens"].float()])
    model.train(was_training)
    loss_sum, tokens = accelerator.reduce(totals, reduction="sum").tolist()
    loss = loss_sum / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def train_sft(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    model_config: ModelConfig,
    config: SFTConfig,
    log: LogFn,
    checkpoint_dir: str | None = None,
) -> PreTrainedModel:
    """Fine-tune ``model_config``'s base on (prompt, response) demonstrations; returns the model.

    ``prompts`` are canonical; they and the responses are rendered here
    (``Renderer.for_model``: the tokenizer's chat template, else the plain template).
    Checkpoints go to ``checkpoint_dir`` every ``config.checkpoint_every`` steps.
    """
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum, config.seed,
                                   batch_size=config.batch_size, max_grad_norm=config.max_grad_norm)
    model = build_causal_lm(model_config, tokenizer)  # after seeding: same seed, same init
    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    adapters = lora_config(config.lora)
    if adapters is not None:
        model = add_adapters(model, adapters)  # only the adapters train

    # Data: tokenise everything once; hold out a seeded split; pack the training rows.
    data = Renderer.for_model(model_config, tokenizer).tokenize(
        list(prompts), list(responses), model_config.max_prompt_tokens, model_config.max_response_tokens
    )
    n_rows = data["input_ids"].shape[0]
    n_eval = math.ceil(n_rows * config.eval_fraction)
    if n_rows - n_eval < 1:
        raise ValueError(f"sft: {n_rows} demonstrations leave nothing to train on after holding out {n_eval}")
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(config.seed))
    train_rows, eval_rows = select_rows(data, order[n_eval:]), select_rows(data, order[:n_eval])
    if config.packing:
        train_rows = pack_sequences(train_rows, model_config.max_length, tokenizer.pad_token_id)
    train_loader = _loader(train_rows, config.batch_size, shuffle=True, seed=config.seed)
    eval_loader = _loader(eval_rows, config.eval_batch_size, shuffle=False, seed=config.seed)

    # what a resumable checkpoint must have started from: these settings, data and weights
    checkpoints = Checkpoints(accelerator, checkpoint_dir, "sft", config, model_config, data, model)
    optimizer = make_optimizer(model, config)
    # the held-out loader stays unprepared: evaluate_sft shards it without repeating rows
    model, optimizer, train_loader = prepare_for_epochs(accelerator, model, optimizer, train_loader)

    def loss_and_stats(batch: Batch) -> tuple[torch.Tensor, Stats]:
        logits = _forward(model, batch)  # (B, T, V)
        loss, stats = sft_loss(logits, batch["input_ids"], batch["completion_mask"])
        return loss, {"loss/sft": stats["loss"], "tokens": stats["tokens"]}

    trained = train_epochs(
        accelerator,
        model,
        optimizer,
        train_loader,
        config,
        "sft",
        loss_and_stats,
        log,
        averaged=("loss/sft",),
        weight=lambda batch, stats: stats["tokens"],  # a token-weighted mean, as the loss itself
        throughput=("tokens", lambda batch: (batch["input_ids"] != tokenizer.pad_token_id).sum()),
        postfix={"loss": "loss/sft"},
        evaluate=(lambda: evaluate_sft(model, eval_loader, accelerator)) if n_eval else None,
        checkpoints=checkpoints,
    )
    adapter_dir = Path(checkpoint_dir) / ADAPTER_FOLDER if checkpoint_dir and adapters is not None else None
    return merged(trained, adapter_dir, accelerator.is_main_process)
