"""Crafted preference tables for the validation tests (tests/data and tests/pipelines)."""

from __future__ import annotations

import pandas as pd
import yaml

from alignops.preferences.schema import as_canonical
from alignops.preferences.validation import DataValidationConfig, parse_suite, validate_preferences
from tests.helpers import REPO_ROOT

BASE = yaml.safe_load((REPO_ROOT / "conf/base/parameters_data_validation.yml").read_text())
TEST_ENV = yaml.safe_load((REPO_ROOT / "conf/test/parameters_data_validation.yml").read_text())
ROWS = 40  # one bad row is 2.5%, under the base max_bad_fraction of 5%


def clean_frame(n: int = ROWS) -> pd.DataFrame:
    """``n`` canonical rows that pass every expectation (four annotators in turn)."""
    i = pd.RangeIndex(n)
    return as_canonical(
        pd.DataFrame(
            {
                "prompt": "Human: how do I reset my password, case " + i.astype(str) + "?",
                "chosen": "Open settings, choose Security, then Reset (case "
                + i.astype(str)
                + ").",
                "rejected": "No idea " + i.astype(str),
                "annotator_id": pd.Series(["ann", "bob", "cy", "di"] * (n // 4 + 1))[:n],
                "prompt_consistent": True,
                "source": "crafted.jsonl",
                "source_format": "trl_explicit",
                "source_line": i + 1,
            }
        )
    )


def validate(frame: pd.DataFrame, mode: str, **overrides):
    """Validate with the test environment's parameters (base limits, min_rows 10)."""
    config = DataValidationConfig(**{**TEST_ENV["data_validation"], "mode": mode, **overrides})
    return validate_preferences(frame, config, parse_suite(BASE["data_validation_suite"], config))


def set_values(frame: pd.DataFrame, row: int, **values) -> pd.DataFrame:
    """``frame`` with ``row``'s cells set to ``values`` (in place, returned to chain)."""
    for column, value in values.items():
        frame.loc[row, column] = value
    return frame
