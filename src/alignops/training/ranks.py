"""How the ranks of a multi-process stage share its work: each training batch to one rank
(``RankBatches``), held-out batches likewise with zero-weight fillers, and losses weighted so
that their gradient is the mean over every rank's tokens or pairs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Sampler


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
