"""The canonical preference table: the one shape every source is turned into.

Ingestion produces it, validation checks it, training reads it. One row is one
ordered comparison: ``chosen`` was preferred to ``rejected`` as a reply to ``prompt``.
"""

from __future__ import annotations

import pandas as pd

#: column -> pandas dtype. Nullable dtypes where a source may not know the value.
CANONICAL_DTYPES: dict[str, str] = {
    "prompt": "string",  # the context the responses answer, exactly as the model will see it
    "chosen": "string",  # the preferred response (without the prompt)
    "rejected": "string",  # the dispreferred response (without the prompt)
    "annotator_id": "string",  # who labelled the pair; <NA> when the source does not say
    "item_id": "string",  # pairs expanded from one ranking (one labelling act) share it
    "chosen_rank": "Int64",  # 1 = best, from K-wise rankings; <NA> for pairwise sources
    "rejected_rank": "Int64",
    "margin": "Float64",  # preference strength (rank gap, or a source's own margin); <NA> if unknown
    "prompt_consistent": "boolean",  # False when chosen/rejected transcripts disagree before the last turn
    "source": "string",  # the file the row came from
    "source_format": "string",  # trl_explicit | trl_conversational | hh_rlhf | kwise
    "source_line": "Int64",  # 1-based line (jsonl/csv) or record number (json/parquet) in `source`
}

CANONICAL_COLUMNS: list[str] = list(CANONICAL_DTYPES)
REQUIRED_TEXT_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")


def empty_canonical() -> pd.DataFrame:
    """A zero-row canonical table with the right dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CANONICAL_DTYPES.items()})


def as_canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Order and cast ``frame`` to the canonical columns; missing optional columns become <NA>."""
    out = pd.DataFrame(index=frame.index)
    for column, dtype in CANONICAL_DTYPES.items():
        values = frame[column] if column in frame else pd.Series(pd.NA, index=frame.index)
        out[column] = values.astype(dtype)
    return out.reset_index(drop=True)
