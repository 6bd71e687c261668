"""The preference table split by prompt into training, held-out and audit parts.

Splitting by prompt (not by row) keeps every comparison of one prompt — K-wise
expansions and double labels included — on one side, so held-out accuracy is
measured on prompts the reward model and DPO never trained on, and the audit
judge's prompts were never seen by the reward model, PPO or DPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: part name -> the order parts take the unit interval in (held-out first, so adding an
#: audit share leaves the held-out prompts unchanged)
PARTS = ("heldout", "audit", "train")


@dataclass(frozen=True)
class SplitConfig:
    heldout_fraction: float = 0.1
    """Share of distinct prompts held out from every training stage: the reward models'
    held-out accuracy and, on a user's data, the evaluation prompts come from them."""
    audit_fraction: float = 0.2
    """Share of distinct prompts kept for the audit judge, a reward model no other stage
    sees, so it can judge the policies without sharing the training reward model's
    blind spots. 0 leaves no audit split (then ``audit_judge.source`` must be
    ``pretrained``)."""
    seed: int = 0
    """Changes which prompts land where; the same seed always picks the same ones."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0 or not 0.0 <= self.audit_fraction < 1.0:
            raise ValueError(
                f"heldout_fraction and audit_fraction must lie in [0, 1), got {self.heldout_fraction}, "
                f"{self.audit_fraction}"
            )
        if self.heldout_fraction + self.audit_fraction >= 1.0:
            raise ValueError("heldout_fraction + audit_fraction must leave prompts to train on (sum < 1)")


def prompt_unit(prompts: pd.Series, seed: int) -> np.ndarray:
    """(N,) a keyed hash of each prompt's text, uniform in [0, 1).

    A hash, so the part a prompt lands in never depends on which other rows are in
    the table (adding data does not reshuffle the split).
    """
    key = f"alignops{seed:08d}"[:16]  # hash_pandas_object wants a 16-byte key
    hashes = pd.util.hash_pandas_object(prompts.astype("string"), index=False, hash_key=key)
    return hashes.to_numpy(dtype=np.uint64) / np.float64(2**64)


def heldout_mask(prompts: pd.Series, config: SplitConfig) -> np.ndarray:
    """True for rows whose prompt falls in the held-out share."""
    return prompt_unit(prompts, config.seed) < config.heldout_fraction


def split_preferences(
    preferences: pd.DataFrame, config: SplitConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, heldout, audit) rows of ``preferences``, each in the original order."""
    unit = prompt_unit(preferences["prompt"], config.seed)
    heldout = unit < config.heldout_fraction
    audit = ~heldout & (unit < config.heldout_fraction + config.audit_fraction)
    train = ~heldout & ~audit
    return tuple(preferences.loc[part].reset_index(drop=True) for part in (train, heldout, audit))
