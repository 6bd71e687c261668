"""A held-out split of the preference table by prompt.

Splitting by prompt (not by row) keeps every comparison of one prompt — K-wise
expansions and double labels included — on one side, so held-out accuracy is
measured on prompts the reward model and DPO never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SplitConfig:
    heldout_fraction: float = 0.1
    """Share of distinct prompts held out from reward-model and DPO training."""
    seed: int = 0
    """Changes which prompts are held out; the same seed always picks the same ones."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in [0, 1), got {self.heldout_fraction}")


def heldout_mask(prompts: pd.Series, config: SplitConfig) -> np.ndarray:
    """True for rows whose prompt falls in the held-out share.

    A keyed hash of the prompt text, so the decision for a prompt never depends on
    which other rows are in the table (adding data does not reshuffle the split).
    """
    key = f"alignops{config.seed:08d}"[:16]  # hash_pandas_object wants a 16-byte key
    hashes = pd.util.hash_pandas_object(prompts.astype("string"), index=False, hash_key=key)
    unit = hashes.to_numpy(dtype=np.uint64) / np.float64(2**64)  # uniform in [0, 1)
    return unit < config.heldout_fraction


def split_preferences(
    preferences: pd.DataFrame, config: SplitConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, heldout) rows of ``preferences``, each in the original order."""
    heldout = heldout_mask(preferences["prompt"], config)
    return (
        preferences.loc[~heldout].reset_index(drop=True),
        preferences.loc[heldout].reset_index(drop=True),
    )
