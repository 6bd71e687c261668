"""Measure a generated world: sizes, label quality against gold, and where the demonstrations sit.

These are the numbers that say whether the world is fit for purpose: the panel must
agree with gold as often as real raters agree with the truth (70-90%), two raters
must agree with each other about as often as real ones do, and demonstrations must
be middling so that RLHF has room to improve on SFT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from alignops.world.generator import World
from alignops.world.gold import GoldJudge

GOLD_TIE = 1e-9


def ranking_pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j), i < j, of the K(K-1)/2 unordered pairs of a K-wise ranking."""
    return np.triu_indices(k, 1)


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"n": 0}
    q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {"n": len(values), "mean": float(np.mean(values)), "std": float(np.std(values)),
            "p10": float(q10), "p50": float(q50), "p90": float(q90),
            "min": float(np.min(values)), "max": float(np.max(values))}


def _rate(hits: np.ndarray) -> dict[str, float]:
    return {"n_pairs": int(hits.size), "agreement": float(hits.mean()) if hits.size else None}


def pair_labels(rankings: Sequence[dict], k: int) -> dict[str, np.ndarray]:
    """Per labelling act (L) and pair (P): is the pair strict, and does the annotator prefer i?"""
    ranks = np.array([r["ranks"] for r in rankings], dtype=np.int64).reshape(-1, k)  # (L, K)
    i, j = ranking_pairs(k)
    return {"strict": ranks[:, i] != ranks[:, j], "prefers_i": ranks[:, i] < ranks[:, j]}


def summarise_world(world: World) -> dict:
    """The ``world_summary`` report (JSON-serialisable)."""
    judge = GoldJudge.from_spec(world.judge_spec)
    rankings, candidates, demos = world.rankings, world.candidates, world.sft_demonstrations
    k = len(rankings[0]["responses"])
    n_items = len(candidates) // k

    gold = judge.score(candidates["prompt"], candidates["response"]).reshape(n_items, k)
    item_row = {item: row for row, item in enumerate(candidates["item_id"].iloc[::k])}
    rows = np.array([item_row[r["item_id"]] for r in rankings])  # (L,)
    annotators = np.array([r["annotator_id"] for r in rankings])
    labels = pair_labels(rankings, k)
    i, j = ranking_pairs(k)
    gold_i, gold_j = gold[rows][:, i], gold[rows][:, j]  # (L, P)
    judged = labels["strict"] & (np.abs(gold_i - gold_j) > GOLD_TIE)
    agrees = labels["prefers_i"] == (gold_i > gold_j)

    per_annotator = {
        str(a): _rate(agrees[(annotators == a)[:, None] & judged]) for a in sorted(set(annotators))
    }

    # Inter-annotator agreement: the two labellings of a double-labelled item, on the
    # pairs both ranked strictly.
    firsts, seconds = [], []
    for row in np.unique(rows):
        acts = np.flatnonzero(rows == row)
        if len(acts) == 2:
            firsts.append(acts[0])
            seconds.append(acts[1])
    both = labels["strict"][firsts] & labels["strict"][seconds]
    same = labels["prefers_i"][firsts] == labels["prefers_i"][seconds]

    # Length bias: how often the preferred reply is the longer one, overall and where the
    # longer reply is past gold's ideal band (there gold mostly disagrees; the panel less so).
    words = candidates["n_words"].to_numpy().reshape(n_items, k)[rows]  # (L, K)
    longer_i = words[:, i] > words[:, j]
    differ = words[:, i] != words[:, j]
    over_band = differ & (np.maximum(words[:, i], words[:, j]) > judge.weights.length_hi)

    def prefers_longer(prefers_i: np.ndarray, mask: np.ndarray) -> float | None:
        return float((prefers_i == longer_i)[mask].mean()) if mask.any() else None

    demo_gold = judge.score(demos["prompt"], demos["response"])
    first_act = np.unique(rows, return_index=True)[1]
    top = np.array([r["ranks"] for r in rankings])[first_act] == 1  # (items, K) first labelling
    return {
        "sizes": {
            "n_intents": len(world.judge_spec["intents"]),
            "n_refuse_intents": int(sum(x["refuse"] for x in world.judge_spec["intents"])),
            "k": k,
            "n_ranking_items": int(n_items),
            "n_labellings": len(rankings),
            "n_double_labelled_items": len(firsts),
            "n_pairs": int(labels["strict"].sum()),
            "n_tied_pairs_dropped": int((~labels["strict"]).sum()),
            "n_annotators": len(per_annotator),
            "n_sft": len(demos),
            "n_eval": len(world.eval_prompts),
        },
        "panel_gold_agreement": _rate(agrees[judged])["agreement"],
        "annotator_gold_agreement": per_annotator,
        "inter_annotator_agreement": _rate(same[both]),
        "length_bias": {
            "panel_prefers_longer": prefers_longer(labels["prefers_i"], labels["strict"] & differ),
            "gold_prefers_longer": prefers_longer(gold_i > gold_j, judged & differ),
            "panel_prefers_longer_over_band": prefers_longer(
                labels["prefers_i"], labels["strict"] & over_band
            ),
            "gold_prefers_longer_over_band": prefers_longer(gold_i > gold_j, judged & over_band),
        },
        "gold": {
            "sft_demonstrations": _stats(demo_gold),
            "candidates": _stats(gold.ravel()),
            "best_of_k": _stats(gold.max(axis=1)),
            "panel_top": _stats((gold * top).sum(axis=1) / top.sum(axis=1)),
        },
        "composition": {
            "candidates": {c: _counts(candidates[c]) for c in ("body", "tone", "degenerate")},
            "sft_demonstrations": {c: _counts(demos[c]) for c in ("body", "tone")},
        },
        "words": {
            "prompts": _stats(_words(candidates["prompt"].iloc[::k])),
            "candidates": _stats(candidates["n_words"].to_numpy()),
            "sft_demonstrations": _stats(demos["n_words"].to_numpy()),
        },
    }


def _counts(column: pd.Series) -> dict[str, int]:
    return {str(key): int(n) for key, n in column.value_counts().sort_index().items()}


def _words(texts: pd.Series) -> np.ndarray:
    return texts.str.split().str.len().to_numpy()
