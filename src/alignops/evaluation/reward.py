"""How well a reward model (the training one, or the audit judge) ranks held-out comparisons it never trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alignops.evaluation.judges import Scorer
from alignops.evaluation.statistics import bootstrap_indices, mean_interval


def reward_model_accuracy(
    heldout: pd.DataFrame, score: Scorer, score_gold: Scorer | None = None, seed: int = 0
) -> dict:
    """Pairwise accuracy of ``score`` on held-out pairs, against the panel and the gold judge.

    Against the panel (``panel_accuracy``, with its percentile bootstrap interval over
    pairs): ``score`` puts the labelled ``chosen`` above ``rejected``. The pairs are
    resampled with ``seed``, so two scorers measured with one seed are paired pair by
    pair. Against gold: ``score`` orders the pair as the gold judge does; pairs the gold
    judge scores equal carry no gold preference and are left out.
    """
    prompts, chosen, rejected = heldout["prompt"].tolist(), heldout["chosen"].tolist(), heldout["rejected"].tolist()
    n = len(heldout)
    result: dict = {"heldout_pairs": n, "panel_accuracy": None}
    if not n:
        gold = {"gold_pairs": 0, "heldout_accuracy": None, "panel_gold_agreement": None}
        return result | (gold if score_gold is not None else {})
    gap = np.asarray(score(prompts, chosen)) - np.asarray(score(prompts, rejected))  # (N,)
    result["panel_accuracy"] = mean_interval(gap > 0, bootstrap_indices(n, seed=seed)).as_dict()
    if score_gold is not None:
        gold_gap = np.asarray(score_gold(prompts, chosen)) - np.asarray(score_gold(prompts, rejected))
        decided = gold_gap != 0
        result["gold_pairs"] = int(decided.sum())
        result["heldout_accuracy"] = (
            float(np.mean(np.sign(gap[decided]) == np.sign(gold_gap[decided]))) if decided.any() else None
        )
        # How often the panel's own label agrees with gold on the same pairs: the ceiling's context.
        result["panel_gold_agreement"] = float(np.mean(gold_gap[decided] > 0)) if decided.any() else None
    return result
