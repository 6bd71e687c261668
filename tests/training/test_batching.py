"""The grouped batch sampler of the reward and DPO stages: every item once, groups together,
a new order every epoch, the same order for the same seed."""

from __future__ import annotations

import torch

from alignops.training.batching import GroupedBatches


def test_batches_cover_every_item_once_and_keep_groups_together():
    group = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4])  # rankings of different sizes (reward)
    sampler = GroupedBatches(group, batch_size=4, seed=0)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(group))) and len(batches) == len(sampler) == 3
        runs = [int(group[i]) for i in flat]  # a group's items are consecutive: first + size - 1 == last
        for g in set(runs):
            assert runs.index(g) + int((group == g).sum()) - 1 == len(runs) - 1 - runs[::-1].index(g)
    assert epochs[0] != epochs[1]  # a new order every epoch
    assert list(GroupedBatches(group, 4, seed=0)) == epochs[0]  # the same order for the same seed


def test_length_grouping_keeps_whole_groups_in_a_window_and_shuffles_items_within_them():
    group = torch.arange(40).repeat_interleave(6)  # 40 prompts x 6 pairs, like a K=4 ranking (DPO)
    lengths = torch.randint(5, 50, (40,), generator=torch.Generator().manual_seed(0)).repeat_interleave(6)
    batches = GroupedBatches(group, batch_size=12, seed=0, shuffle_within=True, lengths=lengths, group_batches=4)
    first_epoch, second_epoch = list(batches), list(batches)
    for epoch in (first_epoch, second_epoch):
        assert len(epoch) == len(batches) == 20
        assert sorted(i for batch in epoch for i in batch) == list(range(240))
        # Two whole prompts fit a batch of 12, and prompts never straddle a window of 4 batches.
        assert all(len(set(group[batch].tolist())) == 2 for batch in epoch)

    def order_within_groups(epoch: list[list[int]]) -> list[list[int]]:
        flat = [i for batch in epoch for i in batch]
        return [[i for i in flat if group[i] == g] for g in range(40)]

    assert any(items != sorted(items) for items in order_within_groups(first_epoch))  # shuffled within
    kept = list(GroupedBatches(group, 12, seed=0, shuffle_within=False, lengths=lengths, group_batches=4))
    assert all(items == sorted(items) for items in order_within_groups(kept))

    def padded_tokens(epoch: list[list[int]]) -> int:
        return sum(int(lengths[batch].max()) * len(batch) for batch in epoch)

    # grouping by length pads less than the same sampler drawing whole groups at random
    assert padded_tokens(first_epoch) < padded_tokens(list(GroupedBatches(group, 12, seed=0, shuffle_within=True)))
    assert first_epoch != second_epoch
    again = GroupedBatches(group, 12, seed=0, shuffle_within=True, lengths=lengths, group_batches=4)
    assert list(again) == first_epoch
