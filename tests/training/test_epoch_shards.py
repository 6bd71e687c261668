"""Several processes share out every epoch's training batches (``RankBatches``): every batch
on exactly one rank, every rank making the same number of passes, a rank short of a batch in
the last round running a filler that counts for nothing; emulated ranks, then two real ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from alignops.training.batching import GroupedBatches
from alignops.training.ranks import RankBatches
from tests.helpers import run_kedro, stage_history

BATCH_SIZE = 4


def _grouped(items: int) -> GroupedBatches:
    """The reward model's and DPO's batches: rankings of 1 to 5 pairs kept together, length
    windows of 2 batches shuffled, so the one short batch can fall in any round."""
    sizes = torch.tensor([1, 2, 3, 4, 5]).repeat(items)
    group = torch.arange(len(sizes)).repeat_interleave(sizes)[:items]  # (items,)
    lengths = torch.randint(5, 50, (items,), generator=torch.Generator().manual_seed(1))
    return GroupedBatches(group, BATCH_SIZE, seed=0, shuffle_within=True, lengths=lengths, group_batches=2)


@pytest.mark.parametrize(("items", "processes"), [(48, 2), (48, 3), (44, 2), (41, 2), (41, 3), (43, 4), (3, 4)],
                         ids=lambda value: str(value))
def test_the_ranks_take_every_batch_of_an_epoch_once_and_fillers_only_in_the_last_round(items, processes):
    reference = _grouped(items)  # the order every rank draws from its own, alike seeded, sampler
    shares = [RankBatches(_grouped(items), processes, rank) for rank in range(processes)]
    loaders = [DataLoader(range(items), batch_sampler=share, collate_fn=list) for share in shares]
    for _ in range(2):  # two epochs: a new order each, shared out the same way
        expected = list(reference)
        rounds = math.ceil(len(expected) / processes)
        taken = [list(loader) for loader in loaders]
        assert [len(batches) for batches in taken] == [len(share) for share in shares] == [rounds] * processes

        real, fillers = [], []
        for rank, (share, batches) in enumerate(zip(shares, taken, strict=True)):
            for position, batch in enumerate(batches):
                (real if share.holds(position) else fillers).append((position * processes + rank, batch))
        assert sorted(real) == list(enumerate(expected))  # every batch once, at its place in the order
        assert sorted(i for _, batch in real for i in batch) == list(range(items))  # so every row once
        assert len(fillers) == rounds * processes - len(expected)
        assert all(index // processes == rounds - 1 for index, _ in fillers)  # the last round only
        assert all(batch == expected[0] for _, batch in fillers)  # a real batch again, for a real pass
        if items % BATCH_SIZE and len(expected) > 1:
            assert sorted({len(batch) for batch in expected}) == [items % BATCH_SIZE, BATCH_SIZE]


def test_a_sampler_shorter_than_its_length_is_refused():
    class Short(GroupedBatches):
        def __len__(self) -> int:
            return super().__len__() + 1

    short = Short(torch.arange(8), BATCH_SIZE, seed=0)
    with pytest.raises(RuntimeError, match="gave 2 batches, not its length 3"):
        list(RankBatches(short, 2, 0))


# an epoch of 57 rows (60 demonstrations, 3 held out) unpacked: 29 batches of 2, 15 rounds for
# two ranks, the last a single row on rank 0 beside a filler on rank 1; one process at 4 takes
# 15 batches, the last that same single row. 18 steps reach 3 into the second epoch.
EPOCHS = {"packing": False, "eval_fraction": 0.05, "max_steps": 18, "warmup_steps": 0, "learning_rate": 0.02,
          "eval_every": 5, "log_every": 1}


@pytest.mark.slow
def test_two_ranks_reach_one_process_over_an_odd_epoch_and_into_the_next(project_after):
    project = project_after("data_validation")
    demonstrations = project / "data" / "05_model_input" / "sft_demonstrations.jsonl"
    rows = len(demonstrations.read_text().splitlines())
    train_rows = rows - math.ceil(rows * EPOCHS["eval_fraction"])
    assert math.ceil(train_rows / 2) % 2 == 1  # an odd number of batches: the last round holds a filler
    per_epoch = math.ceil(train_rows / 4)
    assert per_epoch < EPOCHS["max_steps"]

    run_kedro(project, env="test", pipeline_names=["sft"], runtime_params={"sft": {**EPOCHS, "batch_size": 4}})
    one = stage_history(project, "sft")
    run_kedro(project, env="test", pipeline_names=["sft"],
              runtime_params={"sft": {**EPOCHS, "batch_size": 2, "num_processes": 2}})
    two = stage_history(project, "sft")

    epochs = {row["step"]: row["sft/epoch"] for row in two if "sft/epoch" in row}
    assert epochs[per_epoch] == 1.0 and epochs[EPOCHS["max_steps"]] > 1.0  # the same epochs as one process
    assert epochs == {row["step"]: row["sft/epoch"] for row in one if "sft/epoch" in row}
    for name in ("loss/sft", "eval/sft/loss"):
        a = [row[name] for row in one if name in row]
        b = [row[name] for row in two if name in row]
        assert len(a) == len(b) > 0
        # the same rows every step, the epoch's single last row included; only float sums' order differs
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), json.dumps({"one": a, "two": b})
