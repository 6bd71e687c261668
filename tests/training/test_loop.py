"""The epoch loop SFT, reward and DPO share, on a linear model: weighted interval means, the
rate each update used, held-out names by stage, optimiser steps under accumulation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from alignops.training.accelerator import make_accelerator
from alignops.training.common import MetricHistory, train_epochs
from alignops.training.optim import lr_multiplier, make_optimizer

X = torch.linspace(-1, 1, 20).reshape(10, 2)  # (N, 2)
Y = X.sum(1, keepdim=True) * 3  # (N, 1)


def _config(**overrides) -> SimpleNamespace:
    settings = dict(
        learning_rate=0.1,
        weight_decay=0.0,
        adam_beta2=0.98,
        max_grad_norm=1.0,
        grad_accum=1,
        epochs=2.0,
        max_steps=None,
        warmup_steps=0,
        schedule="linear",
        log_every=4,
        eval_every=4,
        checkpoint_every=0,
        keep_checkpoints=1,
        resume="auto",
    )
    return SimpleNamespace(**{**settings, **overrides})


def _run(config: SimpleNamespace) -> tuple[MetricHistory, list[tuple[float, int]]]:
    accelerator = make_accelerator("no", config.grad_accum, seed=0, cpu=True)
    model = torch.nn.Linear(2, 1)
    optimizer = make_optimizer(model, config)
    loader = DataLoader(range(10), batch_size=3, collate_fn=lambda index: {"x": X[index], "y": Y[index]})
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    seen = []  # (loss, rows) of every micro-batch

    def loss_and_stats(batch):
        loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        seen.append((float(loss.detach()), len(batch["x"])))
        return loss, {"loss/toy": loss.detach()}

    history = MetricHistory()
    train_epochs(
        accelerator,
        model,
        optimizer,
        loader,
        config,
        "toy",
        loss_and_stats,
        history,
        averaged=("loss/toy",),
        weight=lambda batch, stats: len(batch["x"]),
        throughput=("rows", lambda b: len(b["x"])),
        postfix={"loss": "loss/toy"},
        evaluate=lambda: {"loss": 0.5},
    )
    return history, seen


def test_rows_hold_weighted_means_the_rate_each_update_used_and_stage_named_eval():
    history, seen = _run(_config())
    train = [row for row in history.rows if "loss/toy" in row]
    assert [row["step"] for row in train] == [4, 8]  # 4 batches (3, 3, 3, 1 rows) an epoch, 2 epochs
    for row, interval in zip(train, (seen[:4], seen[4:]), strict=True):
        expected = sum(loss * rows for loss, rows in interval) / sum(rows for _, rows in interval)
        assert row["loss/toy"] == pytest.approx(expected, rel=1e-6)  # row-weighted, not a mean of batch means
        assert row["toy/lr"] == pytest.approx(0.1 * lr_multiplier(row["step"] - 1, 0, 8, "linear"))
        assert row["toy/epoch"] == row["step"] / 4 and row["toy/rows_per_s"] > 0
    evals = [(row["step"], row["eval/toy/loss"]) for row in history.rows if "eval/toy/loss" in row]
    assert evals == [(4, 0.5), (8, 0.5)]


def test_accumulated_micro_batches_make_one_step_and_max_steps_wins():
    history, seen = _run(_config(grad_accum=2, max_steps=3, log_every=1))
    assert [row["step"] for row in history.rows if "loss/toy" in row] == [1, 2, 3]
    assert len(seen) == 6  # two micro-batches per optimiser step, the loader restarted after 4


def test_gc_frozen_freezes_for_the_loop_only_and_leaves_an_outer_freeze_alone():
    import gc

    from alignops.training.common import gc_frozen

    seen = []

    @gc_frozen
    def loop(value):
        seen.append(gc.get_freeze_count())
        return value * 2

    frozen_by_the_session = gc.get_freeze_count()  # tests/conftest.py freezes after collection
    gc.unfreeze()
    try:
        assert loop(21) == 42 and seen[-1] > 0  # what existed at the start is out of the collector's way
        assert gc.get_freeze_count() == 0  # and back in it afterwards
        gc.freeze()
        outer = gc.get_freeze_count()
        made_since = [[] for _ in range(1000)]  # would be frozen too if the loop froze again
        loop(1)
        # an outer freeze is neither undone nor redone (frozen objects may still be freed)
        assert 0 < gc.get_freeze_count() <= outer and made_since
    finally:
        gc.unfreeze()
        if frozen_by_the_session:
            gc.freeze()


def test_a_checkpoint_is_never_pruned_for_an_earlier_longer_runs_higher_steps(tmp_path):
    from alignops.training.checkpoints import Checkpoints

    accelerator = make_accelerator(seed=0)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    settings = _config(checkpoint_every=2, keep_checkpoints=2, resume="never")
    checkpoints = Checkpoints(accelerator, tmp_path, "toy", settings)
    for step in (6, 8):  # an earlier run of 8 steps left these
        checkpoints.save(step, {})
    checkpoints.save(2, {})  # this run's first checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002"]
    for step in (4, 6):
        checkpoints.save(step, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006"]
    assert (tmp_path / "step_00000006" / "step.json").is_file() and model is not None
