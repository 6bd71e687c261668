"""Nodes of ingestion. Reading and format handling live in ``alignops.preferences``; the catalog's
``PreferenceSourceDataset`` has already parsed the files when these run."""

from __future__ import annotations

import logging

import pandas as pd

from alignops.preferences.ingestion import QUARANTINE_DTYPES, Ingested, ingestion_summary
from alignops.preferences.schema import as_canonical

logger = logging.getLogger(__name__)


def ingest_preferences(raw_preferences: Ingested) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The canonical preference table and the records quarantined as malformed, with an account of both.

    Only records that break their format are set aside here (a null or mistyped field, a
    duplicated key); rows with inconsistent prompts or empty responses are well-formed and
    stay, for the validation stage to quarantine, so they show in its report.
    """
    summary = ingestion_summary(raw_preferences)
    per_format = ", ".join(f"{fmt}: {rows}" for fmt, rows in summary["rows_per_format"].items()) or "none"
    logger.info(
        "Ingested %d preference pairs from %d file(s) (%s); %d tied k-wise pairs dropped; "
        "%d pairs with inconsistent prompts kept for validation",
        summary["rows"], summary["sources"], per_format, summary["ties_dropped"],
        summary["inconsistent_prompts"],
    )
    quarantine = raw_preferences.quarantine
    if len(quarantine):
        logger.warning(
            "Quarantined %d malformed record(s) at ingestion from %d file(s); ingestion_quarantine "
            "holds each with its file, line and reason",
            len(quarantine), quarantine["source"].nunique(),
        )
    return as_canonical(raw_preferences.preferences), quarantine.astype(QUARANTINE_DTYPES)
