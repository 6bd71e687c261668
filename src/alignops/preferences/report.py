"""The data report: what a person checks before spending compute on preference data.

Row counts, length distributions, annotator load and pairwise agreement, and the
length bias of the labels (how often the chosen response is the longer one — a
reward model trained on biased labels learns "longer is better").
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import matplotlib

matplotlib.use("Agg")  # headless: the report is rendered to a file, never a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

TEXT_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class ReportConfig:
    length_quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
    """Quantiles of the word-count distributions written to the JSON summary."""
    histogram_bins: int = 40
    """Bins of the length histograms in the PNG."""
    min_shared_pairs: int = 5
    """Annotator pairs that co-labelled fewer comparisons than this show no agreement figure."""

    def __post_init__(self) -> None:
        if not all(0.0 <= q <= 1.0 for q in self.length_quantiles):
            raise ValueError(f"length_quantiles must lie in [0, 1], got {self.length_quantiles}")
        if self.histogram_bins < 1 or self.min_shared_pairs < 1:
            raise ValueError("histogram_bins and min_shared_pairs must be positive")


def word_counts(texts: pd.Series) -> pd.Series:
    """Whitespace word counts, vectorised (a missing text counts as zero words)."""
    return texts.fillna("").str.split().str.len().astype("int64")


def annotator_agreement(preferences: pd.DataFrame, min_shared_pairs: int = 1) -> pd.DataFrame:
    """Pairwise agreement between annotators on the comparisons both of them labelled.

    A comparison is identified by its item (or its prompt, when the source has no
    item ids) and the unordered pair of responses; two annotators agree when they
    chose the same response. Returns a square frame (annotators x annotators) of
    agreement rates with the number of shared comparisons in ``.attrs["counts"]``;
    cells with fewer than ``min_shared_pairs`` shared comparisons are NaN.
    """
    labelled = preferences.dropna(subset=["annotator_id"])
    annotators = sorted(labelled["annotator_id"].unique())
    agreement = pd.DataFrame(np.nan, index=annotators, columns=annotators)
    counts = pd.DataFrame(0, index=annotators, columns=annotators)
    if len(annotators) < 2:
        agreement.attrs["counts"] = counts
        return agreement

    item = labelled["item_id"].fillna(labelled["prompt"])
    first_wins = labelled["chosen"] <= labelled["rejected"]  # which side of the sorted pair won
    comparisons = pd.DataFrame(
        {
            "item": item,
            "lo": labelled["chosen"].where(first_wins, labelled["rejected"]),
            "hi": labelled["rejected"].where(first_wins, labelled["chosen"]),
            "annotator": labelled["annotator_id"],
            "first_wins": first_wins.astype(float),
        }
    )
    # One column per annotator: for each comparison, did they prefer the lexically first response?
    votes = comparisons.pivot_table(
        index=["item", "lo", "hi"], columns="annotator", values="first_wins", aggfunc="first"
    )
    for a, b in combinations(annotators, 2):
        both = votes[[a, b]].dropna()
        n = len(both)
        counts.loc[a, b] = counts.loc[b, a] = n
        if n >= min_shared_pairs:
            agreement.loc[a, b] = agreement.loc[b, a] = float((both[a] == both[b]).mean())
    for a in annotators:
        counts.loc[a, a] = int(votes[a].notna().sum())
        agreement.loc[a, a] = 1.0
    agreement.attrs["counts"] = counts
    return agreement


def summarise_preferences(
    preferences: pd.DataFrame,
    validation_report: dict,
    config: ReportConfig,
    ingestion_quarantine: pd.DataFrame | None = None,
) -> dict:
    """The JSON half of the data report.

    ``quarantined_rows`` counts rows the validation gate set aside;
    ``quarantined_records_at_ingestion`` the source records ingestion set aside as
    malformed before (None when not given). No row is counted in both.
    """
    words = {c: word_counts(preferences[c]) for c in TEXT_COLUMNS}
    quantiles = list(config.length_quantiles)
    agreement = annotator_agreement(preferences, config.min_shared_pairs)
    counts = agreement.attrs["counts"]
    off_diagonal = agreement.where(~np.eye(len(agreement), dtype=bool)).stack()
    shared = counts.where(~np.eye(len(counts), dtype=bool)).stack()
    strict_longer = (words["chosen"] > words["rejected"]).sum()
    differing = (words["chosen"] != words["rejected"]).sum()
    return {
        "rows": int(len(preferences)),
        "unique_prompts": int(preferences["prompt"].nunique()),
        "rows_by_source_format": _value_counts(preferences["source_format"]),
        "rows_by_annotator": _value_counts(preferences["annotator_id"]),
        "quarantined_rows": _quarantined_rows(validation_report),
        "quarantined_records_at_ingestion": None if ingestion_quarantine is None else len(ingestion_quarantine),
        "length_words": {
            c: {
                "mean": float(w.mean()) if len(w) else 0.0,
                "max": int(w.max()) if len(w) else 0,
                "quantiles": {str(q): float(v) for q, v in zip(quantiles, w.quantile(quantiles), strict=True)},
            }
            for c, w in words.items()
        },
        # Share of comparisons (with different lengths) where the longer response won.
        "chosen_longer_rate": float(strict_longer / differing) if differing else None,
        "annotator_agreement": {
            "annotators": list(agreement.index),
            "matrix": [[_nan_to_none(v) for v in row] for row in agreement.to_numpy()],
            "shared_comparisons": counts.to_numpy().tolist(),
            # Mean over annotator pairs, weighted by how many comparisons they shared.
            "mean_pairwise": _weighted_mean(off_diagonal, shared.reindex(off_diagonal.index)),
        },
    }


def plot_preferences(preferences: pd.DataFrame, config: ReportConfig) -> plt.Figure:
    """The PNG half: lengths, length bias, annotator load and agreement on one page."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    words = {c: word_counts(preferences[c]) for c in TEXT_COLUMNS}
    top = max((int(w.max()) for w in words.values() if len(w)), default=1)
    bins = np.linspace(0, max(top, 1), config.histogram_bins + 1)

    ax = axes[0, 0]
    for column, counts in words.items():
        ax.hist(counts, bins=bins, histtype="step", linewidth=1.6, label=column)
    ax.set(title="Length distribution", xlabel="words", ylabel="rows")
    ax.legend()

    ax = axes[0, 1]
    gap = words["chosen"] - words["rejected"]
    ax.hist(gap, bins=config.histogram_bins, color="tab:purple")
    ax.axvline(0, color="black", linewidth=1)
    ax.set(
        title="Length bias: words(chosen) - words(rejected)",
        xlabel="word difference (right of 0: longer response won)",
        ylabel="rows",
    )

    ax = axes[1, 0]
    by_annotator = preferences["annotator_id"].fillna("unknown").value_counts().sort_index()
    ax.bar(by_annotator.index.astype(str), by_annotator.to_numpy(), color="tab:blue")
    ax.set(title=f"Comparisons per annotator ({len(preferences)} rows)", ylabel="rows")
    ax.tick_params(axis="x", rotation=45)

    ax = axes[1, 1]
    agreement = annotator_agreement(preferences, config.min_shared_pairs)
    if len(agreement) >= 2:
        image = ax.imshow(agreement.to_numpy(dtype=float), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(agreement)), agreement.columns, rotation=45)
        ax.set_yticks(range(len(agreement)), agreement.index)
        for (i, j), value in np.ndenumerate(agreement.to_numpy(dtype=float)):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title("Annotator agreement on shared comparisons")
    else:
        ax.text(0.5, 0.5, "fewer than two known annotators:\nno agreement to show",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _value_counts(column: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in column.fillna("unknown").value_counts().sort_index().items()}


def _quarantined_rows(validation_report: dict) -> int | None:
    value = validation_report.get("bad_rows") if validation_report else None
    return int(value) if value is not None else None


def _nan_to_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _weighted_mean(values: pd.Series, weights: pd.Series) -> float | None:
    keep = values.notna() & (weights > 0)
    if not keep.any():
        return None
    return float(np.average(values[keep], weights=weights[keep]))
