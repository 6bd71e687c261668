"""What the training loops (SFT, reward, PPO, DPO) share beyond the accelerator
(``training.accelerator``), the optimiser (``training.optim``) and the ranks' shares of the
data (``training.ranks``): guards, progress, metric history, and ``train_epochs``, the epoch
loop of SFT, reward and DPO. Nothing here knows which stage it serves."""

from __future__ import annotations

import functools
import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from alignops.models.collate import Batch
from alignops.training.accelerator import full_model
from alignops.training.checkpoints import Checkpoints
from alignops.training.loop_state import (
    Recorder,
    generator_states,
    generators_of,
    keeping_global_rng,
    metrics_and_step,
    restore_history,
    set_generator_states,
)
from alignops.training.optim import SCHEDULES, make_scheduler
from alignops.training.ranks import RankBatches, global_mean

LogFn = Callable[[dict[str, float], int], None]
Stats = dict[str, torch.Tensor]
P = ParamSpec("P")
R = TypeVar("R")


class NonFiniteLossError(FloatingPointError):
    """A loss became nan or inf; the message names the stage and the optimiser step."""


def check_epoch_loop_settings(config: Any) -> None:
    """The checks every epoch-based loop config (SFT, reward model, DPO) shares; ValueError naming the field.

    ``config`` has learning_rate, epochs, max_steps, warmup_steps, checkpoint_every,
    keep_checkpoints, schedule, weight_decay, max_grad_norm and adam_beta2.
    """
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {config.learning_rate}")
    if config.max_steps is None and config.epochs <= 0:
        raise ValueError(f"epochs must be positive when max_steps is not set, got {config.epochs}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or null to use epochs), got {config.max_steps}")
    if config.warmup_steps < 0 or config.checkpoint_every < 0 or config.keep_checkpoints < 1:
        raise ValueError("warmup_steps and checkpoint_every must be >= 0, keep_checkpoints >= 1")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {config.schedule!r}")
    if config.weight_decay < 0 or config.max_grad_norm <= 0 or not 0.0 < config.adam_beta2 < 1.0:
        raise ValueError("weight_decay must be >= 0, max_grad_norm > 0 and adam_beta2 in (0, 1)")


def check_finite(loss: torch.Tensor, stage: str, step: int) -> None:
    """Stop at the first nan/inf loss, before it reaches the weights (one host sync per call)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(
            f"{stage}: non-finite loss ({loss.detach().float().cpu().tolist()}) at step {step}; "
            "lower the learning rate, check the data, or use bf16 instead of fp16"
        )


def gc_frozen(loop: Callable[P, R]) -> Callable[P, R]:
    """Run ``loop`` with the objects that exist when it starts frozen out of garbage collection.

    A training step allocates many short-lived Python objects, so the collector runs a full
    pass every few steps, and a full pass walks every object in the process: in a Kedro run
    that has imported Kedro, MLflow, Great Expectations and transformers, several hundred
    thousand of them, none of which the loop frees. ``gc.freeze`` moves them to a generation
    the collector skips (objects made during the loop are collected as usual); they are
    unfrozen when the loop returns. Inside an already frozen region this does nothing.
    Results are unchanged: collection never touches tensor values.
    """

    @functools.wraps(loop)
    def frozen(*args: P.args, **kwargs: P.kwargs) -> R:
        if gc.get_freeze_count():
            return loop(*args, **kwargs)
        gc.collect()
        gc.freeze()
        try:
            return loop(*args, **kwargs)
        finally:
            gc.unfreeze()

    return frozen


@gc_frozen
def train_epochs(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    config: Any,
    stage: str,
    loss_and_stats: Callable[[Batch], tuple[torch.Tensor, Stats]],
    log: LogFn,
    *,
    averaged: Sequence[str],
    weight: Callable[[Batch, Stats], torch.Tensor | int],
    throughput: tuple[str, Callable[[Batch], torch.Tensor | int]],
    postfix: Mapping[str, str],
    evaluate: Callable[[], dict[str, float]] | None = None,
    checkpoints: Checkpoints | None = None,
    extra_metrics: Callable[[], dict[str, float]] | None = None,
) -> torch.nn.Module:
    """The epoch loop the SFT, reward and DPO stages share; returns the bare trained model.

    ``model``, ``optimizer`` and ``train_loader`` come prepared by ``prepare_for_epochs``
    (with several processes, an optimiser step is ``grad_accum`` rounds of one batch per
    rank; a filler batch, ``RankBatches``, counts for nothing: no loss, stats or units);
    ``config`` has the fields ``check_epoch_loop_settings`` checks plus grad_accum,
    log_every and eval_every. ``loss_and_stats(batch)`` is the stage's own part: the loss
    to step on and detached stats. Every ``config.log_every`` optimiser steps one row is
    logged: the ``averaged`` stats as means over the interval, each micro-batch counting
    ``weight(batch, stats)`` (tokens, pairs or 1), then ``<stage>/lr`` (the rate the
    update used), ``<stage>/grad_norm`` (before clipping), ``<stage>/<unit>_per_s`` for
    ``throughput = (unit, count(batch))``, ``<stage>/epoch`` and ``extra_metrics()``.
    ``evaluate()`` (None: no held-out set) runs every ``config.eval_every`` steps and at
    the last; its names are logged as ``eval/<stage>/<name>``. ``postfix`` maps a
    progress-bar label to an averaged stat.

    ``checkpoints`` are written every ``checkpoint_every`` steps, and the stage's ``resume``
    says which one to continue from (``Checkpoints.resume``). A resumed loop takes the same
    batches in the same order as an uninterrupted one (the loader's generators as they were
    when the checkpoint's epoch began, then the batches it had taken skipped without being
    loaded) and returns the same model; the history before the checkpoint goes back into
    ``log`` (``restore_history``).
    """
    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total_steps = config.max_steps or max(1, round(steps_per_epoch * config.epochs))
    scheduler = make_scheduler(optimizer, config.schedule, config.warmup_steps, total_steps)
    accelerator.register_for_checkpointing(scheduler)
    unit, count = throughput

    step, skip = 0, 0  # optimiser steps taken; micro-batches (several processes: rounds) of the epoch already taken
    interval = torch.zeros(len(averaged) + 2, device=accelerator.device)  # weighted stat sums, weights, units
    generators = generators_of(train_loader)
    shares = getattr(train_loader, "batch_sampler", None)  # a RankBatches: this rank's batches and fillers
    shares = shares if isinstance(shares, RankBatches) else None
    recorded = Recorder(log)
    resumed = checkpoints.resume() if checkpoints is not None else None
    if resumed is not None:
        step, skip = resumed.step, int(resumed.state["batches_into_epoch"])
        recorded.rows = restore_history(log, resumed.state["history"])
        if accelerator.is_main_process:  # the sums of every rank come back once, on rank 0
            interval.copy_(resumed.state["interval"])
        set_generator_states(generators, resumed.state)
    log = recorded
    interval_start = time.perf_counter()
    bar = progress_bar(accelerator, total_steps, stage, initial=step)
    model.train()
    while step < total_steps:
        epoch_start = generator_states(generators)
        # resumed mid-epoch: the batch sampler replays the epoch's order, skipping what was taken
        loader = keeping_global_rng(accelerator.skip_first_batches(train_loader, skip)) if skip else train_loader
        taken, skip = skip, 0
        for batch in loader:
            real = shares is None or shares.holds(taken)  # else a filler: a pass in step with the other ranks
            taken += 1  # batches (with several processes, rounds) of the epoch
            with accelerator.accumulate(model):
                loss, stats = loss_and_stats(batch)
                check_finite(loss, stage, step)
                batch_weight = torch.as_tensor(weight(batch, stats), device=accelerator.device).float()
                if not real:
                    batch_weight = torch.zeros_like(batch_weight)  # its loss times 0: no gradient
                accelerator.backward(global_mean(loss, batch_weight, accelerator))
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if real:
                units = torch.as_tensor(count(batch), device=accelerator.device).float()
                interval += torch.stack([*(stats[name].float() * batch_weight for name in averaged), batch_weight,
                                         units])
            if not accelerator.sync_gradients:
                continue

            lr = scheduler.get_last_lr()[0]  # the rate this update used
            scheduler.step()
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total_steps:
                *sums, weights, counted = accelerator.reduce(interval, reduction="sum").tolist()
                means = {name: total / max(weights, 1.0) for name, total in zip(averaged, sums, strict=True)}
                log(
                    {
                        **means,
                        f"{stage}/lr": lr,
                        f"{stage}/grad_norm": float(grad_norm),
                        f"{stage}/{unit}_per_s": counted / max(time.perf_counter() - interval_start, 1e-9),
                        f"{stage}/epoch": step / steps_per_epoch,
                        **(extra_metrics() if extra_metrics is not None else {}),
                    },
                    step,
                )
                bar.set_postfix({label: f"{means[name]:.3f}" for label, name in postfix.items()})
                interval.zero_()
                interval_start = time.perf_counter()
            # evaluation and checkpoints do not count towards the throughput
            started = time.perf_counter()
            if evaluate is not None and (step % config.eval_every == 0 or step == total_steps):
                log({f"eval/{stage}/{name}": value for name, value in evaluate().items()}, step)
            if checkpoints is not None and checkpoints.due(step, total_steps):
                epoch_done = taken == len(train_loader)  # the next epoch starts from the generators as they are now
                checkpoints.save(step, {
                    **(generator_states(generators) if epoch_done else epoch_start),
                    "batches_into_epoch": 0 if epoch_done else taken,
                    "interval": accelerator.reduce(interval.clone(), reduction="sum"),  # every rank's, summed
                    "history": recorded.rows,
                })
            interval_start += time.perf_counter() - started
            if step >= total_steps:
                break
    bar.close()
    accelerator.wait_for_everyone()
    trained = full_model(accelerator, accelerator.unwrap_model(model))
    accelerator.free_memory()
    return trained


def progress_bar(accelerator: Accelerator, total: int, desc: str, initial: int = 0) -> tqdm:
    """A tqdm bar over optimiser steps (``initial`` of them already taken), shown by the main process only."""
    return tqdm(
        total=total, initial=initial, desc=desc, disable=not accelerator.is_local_main_process,
        leave=False, dynamic_ncols=True,
    )


class MetricHistory:
    """A ``log(metrics, step)`` callable that keeps every call as a row, and passes it on.

    Loops log into it; nodes return ``rows`` (JSON-ready) for the stage's history file and
    curves. ``sink`` is another log callable to forward to as well (the MLflow logger);
    used as a context manager, a sink's ``flush`` runs on exit. ``stage`` renames a loop's
    stage segment (``reward/accuracy`` -> ``audit_judge/accuracy`` for ``stage=("reward",
    "audit_judge")``) in both, when one loop trains two models in one run.
    """

    def __init__(self, sink: LogFn | None = None, stage: tuple[str, str] | None = None) -> None:
        self.rows: list[dict[str, float]] = []
        self._sink = sink
        self._stage = stage

    def _name(self, name: str) -> str:
        if self._stage is None:
            return name
        old, new = self._stage
        return "/".join(new if part == old else part for part in name.split("/"))

    def __call__(self, metrics: dict[str, Any], step: int) -> None:
        values = {self._name(name): float(value) for name, value in metrics.items()}
        self.rows.append({"step": int(step), **values})
        if self._sink is not None:
            self._sink(values, step)

    def restore(self, rows: list[dict[str, float]]) -> None:
        """Rows a resumed loop logged before its checkpoint: into ``rows`` and on to the sink,
        as ``__call__`` would. A run continued after a kill already has some of them (those
        the killed process sent); the MLflow logger leaves those out (``tracking.logger``)."""
        for row in rows:
            self(*metrics_and_step(row))

    def __enter__(self) -> MetricHistory:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Sends whatever a buffering sink (the MLflow logger) still holds, even after an error."""
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()
