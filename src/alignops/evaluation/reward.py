"""How well the reward model ranks held-out comparisons it never trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd


def reward_model_accuracy(heldout: pd.DataFrame, score_rm, score_gold=None) -> dict:
    """Pairwise accuracy of the RM on held-out pairs, against the panel and the gold judge.

    Against the panel: the RM scores the labelled ``chosen`` above ``rejected``.
    Against gold: the RM orders the pair as the gold judge does; pairs the gold
    judge scores equal carry no gold preference and are left out.
    """
    prompts = heldout["prompt"].tolist()
    rm_chosen = score_rm(prompts, heldout["chosen"].tolist())  # (N,)
    rm_rejected = score_rm(prompts, heldout["rejected"].tolist())
    result = {
        "heldout_pairs": int(len(heldout)),
        "panel_accuracy": float(np.mean(rm_chosen > rm_rejected)) if len(heldout) else None,
    }
    if score_gold is not None:
        gold_gap = score_gold(prompts, heldout["chosen"].tolist()) - score_gold(prompts, heldout["rejected"].tolist())
        decided = gold_gap != 0
        rm_gap = rm_chosen - rm_rejected
        result["gold_pairs"] = int(decided.sum())
        result["heldout_accuracy"] = (
            float(np.mean(np.sign(rm_gap[decided]) == np.sign(gold_gap[decided]))) if decided.any() else None
        )
        # How often the panel's own label agrees with gold on the same pairs: the ceiling's context.
        result["panel_gold_agreement"] = float(np.mean(gold_gap[decided] > 0)) if decided.any() else None
    return result
