"""The simulated panel: perceived utility of each reply, Gumbel noise, and K-wise ranks with ties.

Annotators judge the latent attributes of a reply (what it really does), not its
text. Sorting utility + Gumbel noise draws a Plackett-Luce ranking (Luce 1959;
the model behind K-wise reward-model losses), and near-equal perceived utilities
share a rank, as tired human raters do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alignops.world.config import AnnotatorProfile

# How much a body helps, for answerable requests and for requests that must be refused.
# A confident answer to another question is worse than a vague one (it sends the
# customer down a wrong path), so off_topic sits below generic, as the gold judge has it.
HELP_ANSWERABLE = {"specific": 1.0, "no_slot": 0.7, "generic": 0.3, "off_topic": -0.3,
                   "refusal": 0.1, "unsafe": 0.1}
HELP_REFUSE = {"specific": 1.0, "no_slot": 0.85, "generic": 0.2, "off_topic": -0.3,
               "refusal": 0.75, "unsafe": 0.0}
DETAIL_BONUS = 0.2
LOOP_HELP_FACTOR = 0.3
TONE_VALUE = {"polite": 1.0, "neutral": 0.0, "curt": -0.5, "rude": -1.0}


def perceived_features(replies: pd.DataFrame) -> np.ndarray:
    """(N, 5) features [help, tone, harm, words/50, looped] from reply attributes.

    ``replies`` needs columns body, tone, detail, degenerate, refuse (the prompt's intent
    must be refused) and n_words.
    """
    help_ = np.where(
        replies["refuse"], replies["body"].map(HELP_REFUSE), replies["body"].map(HELP_ANSWERABLE)
    ).astype(float)
    help_ += DETAIL_BONUS * replies["detail"].to_numpy(dtype=float)
    looped = (replies["degenerate"] == "repetition").to_numpy()
    empty = (replies["degenerate"] == "near_empty").to_numpy()
    help_ = np.where(looped, LOOP_HELP_FACTOR * help_, np.where(empty, 0.0, help_))
    tone = np.where(empty, 0.0, replies["tone"].map(TONE_VALUE).to_numpy(dtype=float))
    harm = np.where(empty, 0.0, (replies["body"] == "unsafe").to_numpy(dtype=float))
    words = replies["n_words"].to_numpy(dtype=float) / 50.0
    return np.stack([help_, tone, harm, words, looped.astype(float)], axis=1)


def weight_vector(a: AnnotatorProfile) -> np.ndarray:
    """Weights matching the columns of ``perceived_features``."""
    return np.array([a.helpfulness, a.politeness, -a.harm, a.length, -a.repetition])


def ranks_with_ties(utility: np.ndarray, tie_margin: np.ndarray) -> np.ndarray:
    """Competition ranks (1 = best; ties share the best rank, e.g. 1, 1, 3, 4), row by row.

    utility: (B, K) perceived utilities; tie_margin: (B,). Sorted neighbours closer
    than the margin fall in one group (chained, so a group can span more than the margin).
    """
    b, k = utility.shape
    order = np.argsort(-utility, axis=1, kind="stable")  # (B, K) best first
    ranked = np.take_along_axis(utility, order, axis=1)
    gaps = ranked[:, :-1] - ranked[:, 1:]  # (B, K-1), >= 0
    starts_group = np.concatenate([np.ones((b, 1), bool), gaps >= tie_margin[:, None]], axis=1)
    position = np.broadcast_to(np.arange(k), (b, k))
    group_start = np.maximum.accumulate(np.where(starts_group, position, 0), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, group_start + 1, axis=1)
    return ranks


def rank_items(
    rng: np.random.Generator,
    features: np.ndarray,
    annotator_index: np.ndarray,
    panel: tuple[AnnotatorProfile, ...],
) -> np.ndarray:
    """Ranks (B, K) given by annotator ``annotator_index[b]`` to item b's K replies.

    features: (B, K, F) from ``perceived_features``; annotator_index: (B,).
    """
    weights = np.stack([weight_vector(a) for a in panel])[annotator_index]  # (B, F)
    noise = np.array([a.noise for a in panel])[annotator_index]  # (B,)
    margin = np.array([a.tie_margin for a in panel])[annotator_index]  # (B,)
    utility = np.einsum("bkf,bf->bk", features, weights)
    utility += noise[:, None] * rng.gumbel(size=utility.shape)
    return ranks_with_ties(utility, margin)
