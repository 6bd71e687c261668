"""What a loop must put back to continue where a checkpoint left it, beside the weights and
optimiser accelerate saves: the generators that order its batches, torch's global generator
across a resumed loader's start, and the metric history it has logged
(``alignops.training.checkpoints`` saves and loads them; the loops use them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from alignops.models.collate import Batch


def generators_of(loader: Any) -> list[torch.Generator]:
    """Every ``torch.Generator`` that decides a (prepared) data loader's batch order, in a
    fixed order: the loader's own, its sampler's and its batch sampler's, through
    accelerate's wrappers. Their states at an epoch's start, and the batches taken since,
    place a resumed loop at the same batch."""
    found: list[torch.Generator] = []
    seen: set[int] = set()
    queue: list[Any] = [loader]
    while queue:
        item = queue.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Generator):
            found.append(item)
            continue
        for attribute in ("generator", "synchronized_generator", "sampler", "batch_sampler"):
            queue.append(getattr(item, attribute, None))
    return found


def generator_states(generators: Iterable[torch.Generator]) -> dict[str, torch.Tensor]:
    return {f"generator_{index}": generator.get_state() for index, generator in enumerate(generators)}


def set_generator_states(generators: Iterable[torch.Generator], states: Mapping[str, torch.Tensor]) -> None:
    for index, generator in enumerate(generators):
        generator.set_state(states[f"generator_{index}"])


class Recorder:
    """A ``log(metrics, step)`` callable that passes every row on to ``log`` and keeps it, so
    that a checkpoint holds the history a resumed stage must return."""

    def __init__(self, log: Callable[[dict[str, float], int], None]) -> None:
        self.log = log
        self.rows: list[dict[str, float]] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append({"step": int(step), **{name: float(value) for name, value in metrics.items()}})
        self.log(metrics, step)


def restore_history(log: Callable[[dict[str, float], int], None], rows: list[dict[str, float]]) -> list[dict]:
    """Give ``log`` back the rows a checkpoint kept: through its ``restore`` where it has one
    (``MetricHistory``), else by logging them again. Returns the rows, for the loop's ``Recorder``."""
    restore = getattr(log, "restore", None)
    if restore is not None:
        restore(rows)
    else:
        for row in rows:
            log(*metrics_and_step(row))
    return list(rows)


def metrics_and_step(row: Mapping[str, float]) -> tuple[dict[str, float], int]:
    """A history row as the ``log(metrics, step)`` call that made it."""
    return {name: value for name, value in row.items() if name != "step"}, int(row["step"])


def keeping_global_rng(loader: DataLoader) -> Iterator[Batch]:
    """``loader``'s batches, with torch's global generator as it was before they started: a
    loader without a generator of its own draws its base seed from the global one when it
    starts, which the interrupted run did at the epoch's start, before the checkpoint that
    holds the global state; drawing again would put dropout one draw ahead."""
    state = torch.get_rng_state()
    iterator = iter(loader)
    first = next(iterator, None)  # the draw happens here
    torch.set_rng_state(state)
    if first is not None:
        yield first
        yield from iterator
