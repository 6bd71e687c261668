"""Nodes of sources: what SFT learns from and what the policies answer, on a user's own data."""

from __future__ import annotations

import pandas as pd

from alignops.preferences.sources import (
    SourcesConfig,
    demonstrations_from_chosen,
    read_demonstrations,
    select_eval_prompts,
)


def chosen_demonstrations(preferences_train: pd.DataFrame) -> pd.DataFrame:
    """The chosen responses of the training split as SFT demonstrations."""
    return demonstrations_from_chosen(preferences_train)


def file_demonstrations(raw_demonstrations: pd.DataFrame) -> pd.DataFrame:
    """The user's demonstrations file (prompt/response or conversational messages)."""
    return read_demonstrations(raw_demonstrations)


def heldout_eval_prompts(preferences_heldout: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The distinct held-out prompts: no training stage saw them."""
    return select_eval_prompts(preferences_heldout["prompt"], SourcesConfig(**params))


def file_eval_prompts(raw_eval_prompts: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The user's evaluation prompts file (a ``prompt`` column)."""
    if "prompt" not in raw_eval_prompts.columns:
        raise ValueError(f"raw_eval_prompts needs a 'prompt' column; got {list(raw_eval_prompts.columns)}")
    return select_eval_prompts(raw_eval_prompts["prompt"], SourcesConfig(**params))
