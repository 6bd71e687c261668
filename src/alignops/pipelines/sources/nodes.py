"""Nodes of sources: what SFT learns from and what the policies answer, on a user's own data."""

from __future__ import annotations

import logging

import pandas as pd

from alignops.preferences.sources import (
    SourcesConfig,
    demonstrations_from_chosen,
    read_demonstrations,
    select_eval_prompts,
    without_prompts,
)

logger = logging.getLogger(__name__)


def chosen_demonstrations(preferences_train: pd.DataFrame) -> pd.DataFrame:
    """The chosen responses of the training split as SFT demonstrations."""
    return demonstrations_from_chosen(preferences_train)


def file_demonstrations(
    raw_demonstrations: pd.DataFrame, preferences_heldout: pd.DataFrame, preferences_audit: pd.DataFrame
) -> pd.DataFrame:
    """The user's demonstrations file (prompt/response or conversational messages), less any
    demonstration of a held-out or audit prompt: SFT, and PPO through its prompts, never see those."""
    demonstrations, dropped = without_prompts(
        read_demonstrations(raw_demonstrations), preferences_heldout, preferences_audit
    )
    if dropped:
        logger.warning("sources: %d demonstrations answer held-out or audit prompts and were left out", dropped)
    if demonstrations.empty:
        raise ValueError("sources: every demonstration answers a held-out or audit prompt; none is left for SFT")
    return demonstrations


def heldout_eval_prompts(preferences_heldout: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The distinct held-out prompts: no training stage saw them."""
    return select_eval_prompts(preferences_heldout["prompt"], SourcesConfig(**params))


def file_eval_prompts(
    raw_eval_prompts: pd.DataFrame, preferences_train: pd.DataFrame, preferences_audit: pd.DataFrame, params: dict
) -> pd.DataFrame:
    """The user's evaluation prompts file (a ``prompt`` column, and optionally ``should_refuse``:
    true for the prompts a good policy declines, which the report's alignment tax reads), less
    the prompts the policies or the audit judge trained on."""
    if "prompt" not in raw_eval_prompts.columns:
        raise ValueError(f"raw_eval_prompts needs a 'prompt' column; got {list(raw_eval_prompts.columns)}")
    prompts, dropped = without_prompts(raw_eval_prompts[["prompt"]], preferences_train, preferences_audit)
    if dropped:
        logger.warning("sources: %d evaluation prompts are training or audit prompts and were left out", dropped)
    selected = select_eval_prompts(prompts["prompt"], SourcesConfig(**params))
    if "should_refuse" in raw_eval_prompts.columns:
        labels = raw_eval_prompts.drop_duplicates("prompt").set_index("prompt")["should_refuse"]
        selected["should_refuse"] = selected["prompt"].map(labels).eq(True).to_numpy()  # unlabelled: answerable
    return selected
