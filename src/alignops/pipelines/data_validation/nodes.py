"""Nodes of the validation gate: validate (never raises on data), then gate (raises per mode).

Two nodes so that Kedro saves the report, the Data Docs and the quarantine before
the gate can stop the run: a failed validation leaves its report behind.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from alignops.preferences.split import SplitConfig, split_preferences
from alignops.preferences.validation import (
    DataValidationConfig,
    parse_suite,
    raise_for_report,
    validate_preferences,
)


def validate(
    preferences: pd.DataFrame, params: dict[str, Any], suite: list[dict[str, Any]]
) -> tuple[dict, dict, pd.DataFrame, pd.DataFrame]:
    """Report, Data Docs payload, good rows and quarantined rows of ``preferences``."""
    config = DataValidationConfig(**params)
    outcome = validate_preferences(preferences, config, parse_suite(suite, config))
    return outcome.report, outcome.data_docs, outcome.good, outcome.quarantined


def gate(validation_report: dict[str, Any], passing_preferences: pd.DataFrame) -> pd.DataFrame:
    """Stop the run with ``DataValidationError`` if the report failed; else pass good rows on."""
    raise_for_report(validation_report)
    return passing_preferences


def split(
    validated_preferences: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, held-out and audit comparisons, split by prompt (see ``alignops.preferences.split``)."""
    return split_preferences(validated_preferences, SplitConfig(**params))
