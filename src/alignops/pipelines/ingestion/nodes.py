"""Nodes of ingestion. Reading and format handling live in ``alignops.preferences``; the catalog's
``PreferenceSourceDataset`` has already parsed the files when these run."""

from __future__ import annotations

import logging

import pandas as pd

from alignops.preferences.ingestion import ingestion_summary
from alignops.preferences.schema import as_canonical

logger = logging.getLogger(__name__)


def ingest_preferences(raw_preferences: pd.DataFrame) -> pd.DataFrame:
    """The canonical preference table, with a one-line account of what came in.

    Nothing is filtered here: rows with inconsistent prompts or empty responses are
    the validation stage's to quarantine, so they stay visible in its report.
    """
    summary = ingestion_summary(raw_preferences)
    per_format = ", ".join(f"{fmt}: {rows}" for fmt, rows in summary["rows_per_format"].items()) or "none"
    logger.info(
        "Ingested %d preference pairs from %d file(s) (%s); %d tied k-wise pairs dropped; "
        "%d pairs with inconsistent prompts kept for validation",
        summary["rows"], summary["sources"], per_format, summary["ties_dropped"],
        summary["inconsistent_prompts"],
    )
    return as_canonical(raw_preferences)
