"""The data report's agreement matrix and summary on hand-built preference tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alignops.preferences.report import (
    ReportConfig,
    annotator_agreement,
    plot_preferences,
    summarise_preferences,
)
from alignops.preferences.schema import as_canonical


def _pairs(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """rows of (item_id, annotator_id, chosen, rejected) on one shared prompt."""
    return as_canonical(
        pd.DataFrame(
            {
                "prompt": "my parcel is late",
                "item_id": [r[0] for r in rows],
                "annotator_id": [r[1] for r in rows],
                "chosen": [r[2] for r in rows],
                "rejected": [r[3] for r in rows],
                "source_format": "kwise",
            }
        )
    )


def test_agreement_counts_same_choice_regardless_of_column_order():
    table = _pairs(
        [
            # item 1: a and b agree (x over y), c disagrees
            ("1", "a", "x", "y"), ("1", "b", "x", "y"), ("1", "c", "y", "x"),
            # item 2: a and b disagree, c agrees with b
            ("2", "a", "p", "q"), ("2", "b", "q", "p"), ("2", "c", "q", "p"),
            # the same texts in another item are a different comparison: not shared with item 2
            ("3", "a", "p", "q"),
        ]
    )
    agreement = annotator_agreement(table)
    counts = agreement.attrs["counts"]
    assert agreement.loc["a", "b"] == pytest.approx(0.5)
    assert agreement.loc["a", "c"] == pytest.approx(0.0)
    assert agreement.loc["b", "c"] == pytest.approx(0.5)
    assert agreement.loc["b", "a"] == agreement.loc["a", "b"]
    assert counts.loc["a", "b"] == 2 and counts.loc["a", "a"] == 3
    assert np.all(np.diag(agreement.to_numpy()) == 1.0)


def test_agreement_hides_annotator_pairs_with_too_few_shared_comparisons():
    table = _pairs([("1", "a", "x", "y"), ("1", "b", "x", "y"), ("2", "c", "x", "y")])
    agreement = annotator_agreement(table, min_shared_pairs=2)
    assert np.isnan(agreement.loc["a", "b"])  # one shared comparison < 2
    assert np.isnan(agreement.loc["a", "c"])  # none shared


def test_summary_reports_counts_lengths_length_bias_and_is_json_serialisable():
    table = _pairs(
        [
            ("1", "a", "a long helpful answer", "no"),
            ("1", "b", "a long helpful answer", "no"),
            ("2", "a", "short", "a much longer but rude reply"),
        ]
    )
    table.loc[2, "annotator_id"] = pd.NA
    summary = summarise_preferences(table, {"bad_rows": 3}, ReportConfig(min_shared_pairs=1))
    assert summary["rows"] == 3
    assert summary["rows_by_annotator"] == {"a": 1, "b": 1, "unknown": 1}
    assert summary["quarantined_rows"] == 3
    assert summary["quarantined_records_at_ingestion"] is None  # not given
    assert summary["length_words"]["chosen"]["max"] == 4
    assert summary["chosen_longer_rate"] == pytest.approx(2 / 3)
    assert summary["annotator_agreement"]["annotators"] == ["a", "b"]
    assert summary["annotator_agreement"]["mean_pairwise"] == pytest.approx(1.0)
    json.dumps(summary)  # the catalog writes it as JSON


def test_summary_counts_what_each_gate_quarantined():
    table = _pairs([("1", "a", "yes", "no")])
    ingestion_quarantine = pd.DataFrame({"source": ["f.jsonl"] * 2, "source_line": [4, 9]})
    summary = summarise_preferences(table, {"bad_rows": 1}, ReportConfig(), ingestion_quarantine)
    assert (summary["quarantined_rows"], summary["quarantined_records_at_ingestion"]) == (1, 2)
    empty = pd.DataFrame()  # what an empty jsonl quarantine loads as
    assert summarise_preferences(table, {}, ReportConfig(), empty)["quarantined_records_at_ingestion"] == 0


def test_plot_renders_without_known_annotators(tmp_path):
    table = _pairs([("1", "a", "x y", "y")])
    table["annotator_id"] = pd.NA
    figure = plot_preferences(table, ReportConfig())
    figure.savefig(tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_config_rejects_misspelt_and_invalid_keys():
    with pytest.raises(TypeError):
        ReportConfig(histogram_bin=3)
    with pytest.raises(ValueError):
        ReportConfig(length_quantiles=(0.5, 1.5))
