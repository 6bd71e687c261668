"""One batch sampler for the pairwise stages: a group's pairs stay in one batch.

The reward model groups pairs by labelling act (a K-wise ranking), DPO by prompt; in
both, the pairs of a group share replies, so keeping them together lets a step score
each distinct reply once (Ouyang et al. 2022 put all K-choose-2 pairs of a ranking in
one batch, which also keeps one reply from being fitted several times per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GroupedBatches(Sampler[list[int]]):
    """Batches of ``batch_size`` item indices, whole groups together; a new order every epoch.

    Groups come in a shuffled order. With ``shuffle_within``, a group's items are
    shuffled too (otherwise they keep their index order). With ``lengths``, each window
    of ``group_batches`` batches is sorted by its groups' longest item, then all batches
    are shuffled (transformers' ``group_by_length``): a batch's rows are then of similar
    length and little of it is padding. Every draw comes from one generator seeded
    once, so a run is reproducible and each epoch differs. Only the last batch may be
    short, and a group is split only where it straddles a batch boundary.
    """

    def __init__(
        self,
        group: torch.Tensor,
        batch_size: int,
        seed: int,
        *,
        shuffle_within: bool = False,
        lengths: torch.Tensor | None = None,
        group_batches: int = 16,
    ) -> None:
        self.group = group  # (N,) each item's group, 0 .. G-1
        self.batch_size = batch_size
        self.shuffle_within = shuffle_within
        self.window = batch_size * group_batches
        self.n_groups = int(group.max()) + 1 if len(group) else 0
        self.group_lengths = None  # (G,) each group's longest item
        if lengths is not None:
            self.group_lengths = torch.zeros(self.n_groups, dtype=lengths.dtype).scatter_reduce(
                0, group, lengths, "amax"
            )
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.group) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n_items = len(self.group)
        items = torch.randperm(n_items, generator=self.generator) if self.shuffle_within else torch.arange(n_items)
        group_rank = torch.randperm(self.n_groups, generator=self.generator)[self.group[items]]  # (N,)
        order = items[group_rank.argsort(stable=True)]  # groups in random order, each one's items together
        if self.group_lengths is None:
            yield from (batch.tolist() for batch in order.split(self.batch_size))
            return
        batches = []
        for window in order.split(self.window):
            longest = self.group_lengths[self.group[window]]  # (n,) the same for a group's items
            batches += window[longest.argsort(descending=True, stable=True)].split(self.batch_size)
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index].tolist()
