"""The split keeps prompts whole, is stable, and loses no row; the audit part is disjoint from the rest."""

from __future__ import annotations

import pandas as pd
import pytest

from alignops.preferences.split import SplitConfig, heldout_mask, split_preferences


def _table(n_prompts: int = 400, pairs_per_prompt: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [f"prompt {p}" for p in range(n_prompts) for _ in range(pairs_per_prompt)],
            "chosen": "good",
            "rejected": "bad",
        }
    )


def test_split_keeps_every_prompt_on_one_side_and_every_row_somewhere():
    table = _table()
    train, heldout, audit = split_preferences(table, SplitConfig(heldout_fraction=0.2, audit_fraction=0.3))
    assert len(train) + len(heldout) + len(audit) == len(table)
    parts = [set(part["prompt"]) for part in (train, heldout, audit)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert 0.12 < heldout["prompt"].nunique() / 400 < 0.28
    assert 0.22 < audit["prompt"].nunique() / 400 < 0.38


def test_an_audit_share_takes_prompts_from_training_only():
    table = _table()
    _, heldout_before, _ = split_preferences(table, SplitConfig(heldout_fraction=0.2, audit_fraction=0.0))
    _, heldout_after, audit = split_preferences(table, SplitConfig(heldout_fraction=0.2, audit_fraction=0.3))
    assert heldout_before.equals(heldout_after) and len(audit) > 0


def test_a_prompt_lands_on_the_same_side_whatever_else_is_in_the_table():
    config = SplitConfig(heldout_fraction=0.3, seed=7)
    full = heldout_mask(_table()["prompt"], config)
    subset = heldout_mask(_table()["prompt"].iloc[::5].reset_index(drop=True), config)
    assert (full[::5] == subset).all()


def test_seed_changes_the_split_and_zero_fraction_holds_nothing_out():
    prompts = _table()["prompt"]
    assert (heldout_mask(prompts, SplitConfig(0.3, seed=0)) != heldout_mask(prompts, SplitConfig(0.3, seed=1))).any()
    assert not heldout_mask(prompts, SplitConfig(0.0)).any()


def test_config_rejects_bad_fraction_and_misspelt_keys():
    with pytest.raises(ValueError):
        SplitConfig(heldout_fraction=1.0)
    with pytest.raises(ValueError, match="leave prompts to train on"):
        SplitConfig(heldout_fraction=0.5, audit_fraction=0.5)
    with pytest.raises(TypeError):
        SplitConfig(held_out_fraction=0.1)
