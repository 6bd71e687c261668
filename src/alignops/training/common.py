"""What every training loop (SFT, reward, PPO, DPO) shares: accelerator, optimiser, schedule,
guards, checkpoints, progress and metric history, and ``train_epochs``, the epoch loop of
SFT, reward and DPO. Nothing here knows which stage it serves."""

from __future__ import annotations

import functools
import gc
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, set_seed
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from alignops.models.collate import Batch
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

LogFn = Callable[[dict[str, float], int], None]
Stats = dict[str, torch.Tensor]
MIXED_PRECISION = ("no", "bf16", "fp16")
"""What a stage's ``mixed_precision`` may be (accelerate's names)."""


def check_mixed_precision(config: Any) -> None:
    """``config.mixed_precision`` is None (accelerate's own setting: ``accelerate launch
    --mixed_precision``, the launch's config file or ``ACCELERATE_MIXED_PRECISION``, else
    ``no``) or one of ``MIXED_PRECISION``, which then overrides accelerate's. A boolean
    false is read as ``"no"``, which is what YAML 1.1 (Kedro's parser) makes of an unquoted
    ``no``; YAML 1.2 writers drop the quotes around "no" (``dvc exp run -S`` rewrites the
    file with one)."""
    if config.mixed_precision is False:
        object.__setattr__(config, "mixed_precision", "no")  # frozen dataclasses too
    if config.mixed_precision is not None and config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision must be null (accelerate's setting) or one of {MIXED_PRECISION}, "
            f"got {config.mixed_precision!r}"
        )


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


def make_accelerator(
    mixed_precision: str | None = None, grad_accum: int = 1, seed: int = 0, cpu: bool = False,
    batch_size: int | None = None, max_grad_norm: float | None = None,
) -> Accelerator:
    """An ``Accelerator`` for one stage, with python, numpy and torch seeded from ``seed``;
    ``mixed_precision`` None leaves the precision to accelerate's configuration. Under a
    DeepSpeed config, its ``auto`` micro-batch and clipping become the stage's
    ``batch_size`` (per process) and ``max_grad_norm``, and its ``auto`` accumulation ``grad_accum``.

    Accelerate keeps its state process-wide, and one Kedro run trains several stages in
    one process; a stage asking for a different precision than the previous one starts
    from a fresh state instead of failing (the process group, if any, is kept).
    """
    # None is accelerate's setting, resolved here as accelerate would, so that a stage left
    # unset does not inherit the precision an earlier stage of this process asked for
    mixed_precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != mixed_precision or state.get("_cpu") != cpu):
        AcceleratorState._reset_state()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = []
    if deepspeed and not torch.cuda.is_available():
        # without a GPU accelerate picks no backend and each rank believes it is alone, while
        # DeepSpeed's own group spans them all: name gloo so both see the same group
        from accelerate.utils import InitProcessGroupKwargs

        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        _without_cpu_shm_op()
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu,
                              kwargs_handlers=handlers)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        _shard_cpu_ranks(accelerator)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _fill_deepspeed_config(accelerator, batch_size, max_grad_norm)
    set_seed(seed)
    return accelerator


CPU_SHM_SWITCH = "ALIGNOPS_DEEPSPEED_CPU_SHM"
"""Set to 1 to let DeepSpeed on CPU build and use its shared-memory allreduce (see ``_without_cpu_shm_op``)."""


def _without_cpu_shm_op() -> None:
    """DeepSpeed without a GPU reduces over gloo instead of its shared-memory op, unless
    ``ALIGNOPS_DEEPSPEED_CPU_SHM=1``.

    The op is a C++ extension DeepSpeed compiles on first use (about a minute of g++, and it
    needs Python's headers) before the first collective. On CPU, DeepSpeed is here to try a
    configuration before a GPU, where the op is not used (NCCL reduces); the results are the
    same either way, gloo is only slower at sizes this path never reaches. DeepSpeed skips the
    op when its table of compatible ops says so, and keeps that table for the process.
    """
    if os.environ.get(CPU_SHM_SWITCH, "0") == "1":
        return
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def _fill_deepspeed_config(accelerator: Accelerator, batch_size: int | None, max_grad_norm: float | None) -> None:
    """The DeepSpeed config's ``auto`` entries that accelerate cannot fill from a data loader:
    a loop that prepares its model before its loader (DPO), or whose loader has no fixed batch
    size (packed SFT), still tells DeepSpeed its micro-batch; clipping is the stage's, not 1.0."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    if batch_size is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
        config["train_micro_batch_size_per_gpu"] = batch_size
    if max_grad_norm is not None and plugin.is_auto("gradient_clipping"):
        config["gradient_clipping"] = max_grad_norm


def _shard_cpu_ranks(accelerator: Accelerator) -> None:
    """FSDP on CPU ranks, as an FSDP config file asks (``ACCELERATE_USE_FSDP``).

    accelerate 1.15 builds FSDP only for accelerator ranks (GPU, XPU, ...): on CPU ranks it
    drops the FSDP plugin and trains plain data parallel, each rank holding everything.
    torch's FSDP2 (``fully_shard``) shards CPU ranks on the gloo backend, so here the state
    is switched to FSDP with the plugin the config file describes. On GPU ranks accelerate
    has done this already and nothing changes.
    """
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    from accelerate import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch exports
    if plugin.fsdp_version != 2:
        raise ValueError(f"FSDP on CPU ranks needs fsdp_version: 2 in the accelerate config, got {plugin.fsdp_version}")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # every AcceleratorState() copies PartialState's fields again: both must say FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the prepared model may be split between the ranks (FSDP, DeepSpeed): every
    rank must then make the same forward passes (ZeRO-3 gathers weights in each), and the
    whole model is gathered before it is handed back."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def full_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The trained model as a plain module on the CPU: ``model`` itself unless FSDP or
    DeepSpeed holds it, else a new module of its class holding the full weights (every rank
    gets the same copy, so their digests still compare). Under DeepSpeed these are the
    optimiser's fp32 master weights, not a bf16 module's."""
    if not is_sharded(accelerator):
        return model
    from transformers.initialization import no_init_weights

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        # fully_shard gives the module a class of its own, FSDP<class>; the model's class is its base
        base = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    else:
        from deepspeed.utils import safe_get_full_fp32_param

        # every rank gathers every parameter (collective under ZeRO-3), in the same order
        state = {name: safe_get_full_fp32_param(p) for name, p in model.named_parameters(remove_duplicate=False)}
        state.update((name, b) for name, b in model.state_dict().items() if name not in state)  # buffers
        base = type(model)
    state = {name: tensor.detach().cpu() for name, tensor in state.items()}
    dtype = next(iter(state.values())).dtype
    with no_init_weights():
        plain = base(model.config)
    plain.load_state_dict(state)
    plain.generation_config = model.generation_config
    return plain.to(dtype).eval()


def enable_gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """transformers' gradient checkpointing (non-reentrant), when ``enabled``: each layer's
    activations are recomputed in the backward pass instead of kept. It engages in train
    mode only (sampling and evaluation are unaffected) and is not saved with the model."""
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Factor on the peak learning rate after ``step`` optimiser steps.

    Linear warm-up from 1/(warmup+1) to 1 over ``warmup_steps``, then ``SCHEDULES[schedule]``
    from 1 down to 0 at ``total_steps`` (nanoGPT ``get_lr``, without its floor).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return SCHEDULES[schedule](progress)


SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int) -> LambdaLR:
    """``lr_multiplier`` as a torch scheduler; step it once per optimiser step, not per micro-batch."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, schedule))


def decay_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices (linear and embedding weights), none on norms and biases.

    nanoGPT ``configure_optimizers``: decaying a gain or a bias only pulls it towards 0.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, config: Any) -> torch.optim.AdamW:
    """AdamW at ``config.learning_rate`` with ``config.weight_decay`` on matrices and betas
    (0.9, ``config.adam_beta2``): the optimiser of every epoch-based stage."""
    return torch.optim.AdamW(
        decay_parameter_groups(model, config.weight_decay), lr=config.learning_rate, betas=(0.9, config.adam_beta2)
    )


def global_mean(loss: torch.Tensor, weight: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """``loss``, a mean over this rank's ``weight`` units (tokens, pairs), rescaled so that the
    gradient DDP averages over ranks is the mean over every rank's units: a rank holding
    more tokens counts for more, as in one process with the whole batch (OpenRLHF and veRL
    normalise by the global token count the same way). One process: ``loss`` itself."""
    if accelerator.num_processes == 1:
        return loss
    total = accelerator.reduce(weight.detach().clone(), reduction="sum")
    return loss * (weight * accelerator.num_processes / total.clamp_min(1e-12))


def shard_batches(loader: DataLoader, accelerator: Accelerator) -> Iterator[tuple[dict[str, Any], float]]:
    """This rank's share of an unprepared held-out ``loader`` (batch i on rank i mod
    processes), on the rank's device, each with its weight: 1.0, or 0.0 for the filler
    batches a rank with fewer batches runs so that every rank makes the same number of
    forward passes (a wrapped model's collectives stay in step). Held-out sums weighted
    so and reduced over ranks count every row exactly once; a prepared loader would pad
    the last batch with repeated rows instead. One process: every batch, weight 1.0."""
    world, rank = accelerator.num_processes, accelerator.process_index
    rounds, own, spare = -(-len(loader) // world), 0, None
    for index, batch in enumerate(loader):
        if spare is None or index % world == rank:
            moved = {name: value.to(accelerator.device) if torch.is_tensor(value) else value
                     for name, value in batch.items()}
            spare = moved if spare is None else spare
            if index % world == rank:
                own += 1
                yield moved, 1.0
    for _ in range(rounds - own):
        yield spare, 0.0


class RankBatches(Sampler[list[int]]):
    """One rank's share of every epoch of a training loader's ``batches``: batch i on rank i
    mod ``processes`` (every rank draws the same order: the loader's generators are seeded
    alike), and in the last round, for a rank short of a batch, a filler (the epoch's first
    batch again) that ``train_epochs`` weighs 0 (``holds``). Every rank makes ``len(self)``
    passes, so DDP's collectives stay in step, and the ranks' real batches are the epoch's
    batches, each once; accelerate's sharding evens out the last round by repeating rows
    instead, and with batches of varying sizes (``GroupedBatches``) can skip it."""

    def __init__(self, batches: Sampler[list[int]], processes: int, rank: int) -> None:
        self.batch_sampler = batches  # accelerate's wrappers' name for it: generators_of finds its generators
        self.processes, self.rank = processes, rank

    def __len__(self) -> int:
        return -(-len(self.batch_sampler) // self.processes)  # rounds

    def holds(self, position: int) -> bool:
        """Whether this rank's batch at ``position`` of an epoch is a real one (else a filler)."""
        return position * self.processes + self.rank < len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        first, own, index = None, 0, -1
        for index, batch in enumerate(self.batch_sampler):
            first = batch if first is None else first
            if index % self.processes == self.rank:
                own += 1
                yield batch
        if index + 1 != len(self.batch_sampler):  # ``holds`` counts on the length
            raise RuntimeError(f"{type(self.batch_sampler).__name__} gave {index + 1} batches, "
                               f"not its length {len(self.batch_sampler)}")
        for _ in range(len(self) - own):
            yield first


def prepare_for_epochs(accelerator: Accelerator, *objects: Any) -> Any:
    """``accelerator.prepare(*objects)``, the last of which is ``train_epochs``' training loader.

    One process: exactly that. Several: the other objects are prepared (DeepSpeed takes its
    micro-batch from the stage's config, ``make_accelerator``), and the loader's batches are
    shared out by ``RankBatches`` instead of accelerate's sharding, then moved to the rank's
    device by accelerate's loader for one process, which also tells ``accelerator.accumulate``
    where the epoch ends."""
    if accelerator.num_processes == 1:
        return accelerator.prepare(*objects)
    from accelerate.data_loader import prepare_data_loader

    *others, loader = objects
    settings = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
                "generator", "prefetch_factor", "persistent_workers")
    shares = RankBatches(loader.batch_sampler, accelerator.num_processes, accelerator.process_index)
    loader = prepare_data_loader(
        DataLoader(loader.dataset, batch_sampler=shares, **{name: getattr(loader, name) for name in settings}),
        accelerator.device, num_processes=1, process_index=0, put_on_device=accelerator.device_placement,
        non_blocking=accelerator.non_blocking,
    )
    if not others:
        return loader
    prepared = accelerator.prepare(*others)
    return (*(prepared if len(others) > 1 else (prepared,)), loader)


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
