"""The validation gate on crafted tables (one kind of bad row each) and on real HH-RLHF rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alignops.catalog.data_docs import DataDocsDataset
from alignops.preferences.ingestion import read_preferences
from alignops.preferences.validation import (
    DataValidationConfig,
    DataValidationError,
    parse_suite,
    raise_for_report,
)
from alignops.preferences.validation_suite import add_derived_columns, regex_token_counts, token_counter
from tests.data.helpers import BASE, ROWS, clean_frame, set_values, validate

# name -> (row to break, how, the reason it must be quarantined with, the failing expectation)
BAD_ROWS = {
    "null": (
        5,
        lambda f: set_values(f, 5, chosen=pd.NA),
        "chosen is null",
        "expect_column_values_to_not_be_null(column=chosen)",
    ),
    "empty": (
        7,
        lambda f: set_values(f, 7, rejected=" \n\t "),
        "rejected empty after stripping",
        "column=rejected_stripped_chars",
    ),
    "same": (
        11,
        lambda f: set_values(f, 11, rejected=f.loc[11, "chosen"]),
        "chosen equals rejected",
        "column=chosen_differs",
    ),
    "inconsistent": (
        13,
        lambda f: set_values(f, 13, prompt_consistent=False),
        "prompt inconsistent",
        "column=prompt_consistent",
    ),
    "chars": (
        17,
        lambda f: set_values(f, 17, prompt="x" * 4001),
        "prompt too long in characters",
        "column=prompt, max_value=4000",
    ),
    "tokens": (
        19,
        lambda f: set_values(f, 19, chosen="a " * 1100),
        "chosen too long in tokens",
        "column=chosen_tokens",
    ),
    "duplicate": (
        23,  # a repeat of row 2 from the same annotator, recorded on another line
        lambda f: f.assign(
            **{
                c: f[c].mask(f.index == 23, f.loc[2, c])
                for c in ("prompt", "chosen", "rejected", "annotator_id")
            }
        ),
        "duplicate pair",
        "column=is_duplicate_pair",
    ),
}


def test_clean_frame_passes_both_modes():
    for mode in ("strict", "quarantine"):
        outcome = validate(clean_frame(), mode)
        assert outcome.report["success"], outcome.report["problems"]
        assert outcome.report["problems"] == [] and outcome.report["bad_rows"] == 0
        pd.testing.assert_frame_equal(outcome.good, clean_frame())
        assert outcome.quarantined.empty
        raise_for_report(outcome.report)


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_strict_names_the_expectation_and_the_row(kind):
    row, breaks, reason, expectation = BAD_ROWS[kind]
    outcome = validate(breaks(clean_frame()), "strict")
    with pytest.raises(DataValidationError) as excinfo:
        raise_for_report(outcome.report)
    message = str(excinfo.value)
    assert expectation in message and reason in message
    assert f"crafted.jsonl:{row + 1} " in message
    assert (
        len(message.splitlines()) == 3
    )  # header, exactly one failed expectation, pointer to the report


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_quarantine_sets_aside_exactly_that_row(kind):
    row, breaks, reason, _ = BAD_ROWS[kind]
    frame = breaks(clean_frame())
    outcome = validate(frame, "quarantine")
    raise_for_report(outcome.report)  # 1 bad row in 40 is under max_bad_fraction
    assert outcome.quarantined["source_line"].tolist() == [row + 1]
    assert outcome.quarantined["quarantine_reasons"].tolist() == [reason]
    assert len(outcome.good) + len(outcome.quarantined) == len(frame)
    assert row + 1 not in set(outcome.good["source_line"])
    assert outcome.report["reasons"] == {reason: 1}
    assert outcome.report["bad_rows"] == 1 and outcome.report["bad_fraction"] == pytest.approx(
        1 / ROWS
    )
    pd.testing.assert_frame_equal(
        outcome.quarantined.drop(columns="quarantine_reasons"),
        frame.iloc[[row]].reset_index(drop=True),
    )


def test_a_row_failing_several_checks_carries_every_reason():
    frame = set_values(clean_frame(), 3, chosen="   ", prompt_consistent=False)
    reasons = validate(frame, "quarantine").quarantined["quarantine_reasons"].tolist()
    assert reasons == ["chosen empty after stripping; prompt inconsistent"]


def test_bad_fraction_above_max_fails_quarantine_but_keeps_the_split():
    frame = clean_frame()
    for row in (1, 2, 3):  # 3 of 40 = 7.5% > 5%
        set_values(frame, row, chosen="")
    outcome = validate(frame, "quarantine")
    assert not outcome.report["success"]
    assert len(outcome.quarantined) == 3 and len(outcome.good) == ROWS - 3
    with pytest.raises(DataValidationError, match=r"above max_bad_fraction 5\.0%"):
        raise_for_report(outcome.report)
    raise_for_report(validate(frame, "quarantine", max_bad_fraction=0.1).report)


# name -> (frame, config overrides, text the error must contain)
TABLE_FAILURES = {
    "dominating annotator": (
        lambda: clean_frame().assign(annotator_id=["ann"] * 30 + ["bob"] * 10),
        {},
        "one annotator dominates",
    ),
    "too few rows": (lambda: clean_frame(8), {}, "too few rows"),
    "missing column": (
        lambda: clean_frame().drop(columns="rejected"),
        {},
        "rejected column missing",
    ),
}


@pytest.mark.parametrize("kind", TABLE_FAILURES)
@pytest.mark.parametrize("mode", ["strict", "quarantine"])
def test_table_level_failures_raise_in_both_modes(kind, mode):
    build, overrides, text = TABLE_FAILURES[kind]
    frame = build()
    outcome = validate(frame, mode, **overrides)
    assert len(outcome.good) + len(outcome.quarantined) == len(frame)
    with pytest.raises(DataValidationError, match=text):
        raise_for_report(outcome.report)


def test_quarantine_judges_the_row_count_on_the_good_rows():
    outcome = validate(set_values(clean_frame(), 0, chosen=""), "quarantine", min_rows=ROWS)
    with pytest.raises(
        DataValidationError, match=r"on the good rows: .*\[too few rows\]: observed 39"
    ):
        raise_for_report(outcome.report)


def test_missing_column_names_the_gx_error():
    outcome = validate(clean_frame().drop(columns="rejected"), "strict")
    assert "could not be evaluated" in "\n".join(outcome.report["problems"])
    assert outcome.quarantined.empty  # nothing to blame a single row for


def test_unknown_annotators_count_as_one_for_duplicates_and_not_at_all_for_dominance():
    frame = clean_frame().assign(annotator_id=pd.NA)
    frame.loc[:4, "annotator_id"] = ["ann", "bob", "cy", "di", "ed"]  # 5 known, 20% each
    frame = set_values(
        frame,
        30,
        prompt=frame.loc[29, "prompt"],
        chosen=frame.loc[29, "chosen"],
        rejected=frame.loc[29, "rejected"],
    )
    outcome = validate(frame, "quarantine")
    assert outcome.report["success"], outcome.report["problems"]
    assert outcome.quarantined["source_line"].tolist() == [31]
    other_annotator = set_values(
        frame.copy(), 30, annotator_id="ed"
    )  # same texts, another annotator: a new label
    assert validate(other_annotator, "quarantine").quarantined.empty


def test_derived_columns_leave_the_input_alone():
    frame = clean_frame()
    derived = add_derived_columns(frame, regex_token_counts)
    pd.testing.assert_frame_equal(frame, clean_frame())
    assert derived.loc[0, "rejected_tokens"] == 3 and derived.loc[
        0, "rejected_stripped_chars"
    ] == len("No idea 0")
    assert derived["annotator_share"].tolist() == [0.25] * ROWS
    assert regex_token_counts(pd.Series(["Hi, you!", pd.NA], dtype="string")).tolist() == [4, pd.NA]


def test_tokenizer_json_counts_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    # a letters-only BPE: every word costs one token per letter, unlike the regex count
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        ["a b c d e f g h"], trainers.BpeTrainer(special_tokens=["[UNK]"])
    )
    path = str(tmp_path / "tokenizer.json")
    tokenizer.save(path)
    assert token_counter(path)(pd.Series(["abc de", pd.NA], dtype="string")).tolist() == [5, pd.NA]

    frame = set_values(clean_frame(), 9, chosen="abcdefgh " * 200)  # 200 regex words, 1,600 letter tokens
    assert validate(frame, "quarantine").quarantined.empty
    outcome = validate(frame, "quarantine", tokenizer_path=path)
    assert outcome.quarantined["quarantine_reasons"].tolist() == ["chosen too long in tokens"]


def test_report_is_json_and_counts_each_expectation():
    outcome = validate(set_values(clean_frame(), 4, chosen=""), "quarantine")
    report = json.loads(json.dumps(outcome.report))
    assert set(report["runs"]) == {"all_rows", "good_rows"}
    checks = {
        (c["expectation"], c["kwargs"].get("column")): c
        for c in report["runs"]["all_rows"]["expectations"]
    }
    assert len(checks) == len(BASE["data_validation_suite"])
    empty = checks[("expect_column_values_to_be_between", "chosen_stripped_chars")]
    assert not empty["success"] and empty["unexpected_count"] == 1
    assert empty["examples"] == [
        {
            "source": "crafted.jsonl",
            "source_line": 5,
            "values": {"chosen_stripped_chars": "0", "chosen": "''"},
        }
    ]
    assert checks[("expect_table_row_count_to_be_between", None)]["observed_value"] == ROWS
    good_checks = report["runs"]["good_rows"]["expectations"]
    assert good_checks and all(c["success"] and not c["row_level"] for c in good_checks)
    json.dumps(outcome.data_docs)


def test_examples_truncate_long_values():
    outcome = validate(set_values(clean_frame(), 6, prompt="y" * 5000), "strict", max_value_chars=10)
    assert "prompt='yyyyyyyyyy...'" in "\n".join(outcome.report["problems"])


def test_data_docs_site_is_built_at_the_dataset_path(tmp_path):
    outcome = validate(set_values(clean_frame(), 4, chosen=""), "quarantine")
    dataset = DataDocsDataset(path=str(tmp_path / "docs"))
    assert not dataset.exists()
    dataset.save(outcome.data_docs)
    dataset.save(outcome.data_docs)  # a rebuild replaces the last run's pages
    index = Path(dataset.load())
    assert index.samefile(tmp_path / "docs" / "index.html")
    text = index.read_text()
    assert "preferences" in text and "all_rows" in text and "good_rows" in text
    pages = sorted(
        p.relative_to(tmp_path / "docs").parts[2]
        for p in (tmp_path / "docs" / "validations").rglob("*.html")
    )
    assert pages == ["all_rows", "good_rows"]
    suite_page = (tmp_path / "docs" / "expectations" / "preferences.html").read_text()
    assert (
        "expect_column_values_to_not_be_null" in suite_page
        and "chosen empty after stripping" in suite_page
    )


@pytest.mark.parametrize(
    ("params", "suite", "error"),
    [
        ({"mdoe": "strict"}, None, "mdoe"),
        ({"mode": "strickt"}, None, "mode must be one of"),
        ({"max_bad_fraction": 1.5}, None, r"\[0, 1\]"),
        (
            {},
            [
                {
                    "expectation": "expect_column_values_to_not_be_nul",
                    "kwargs": {"column": "chosen"},
                    "meta": {"reason": "r"},
                }
            ],
            "unknown Great Expectations expectation",
        ),
        (
            {},
            [
                {
                    "expectation": "expect_column_values_to_not_be_null",
                    "kwargs": {"colum": "chosen"},
                    "meta": {"reason": "r"},
                }
            ],
            "colum",
        ),
        (
            {},
            [
                {
                    "expectation": "expect_column_values_to_not_be_null",
                    "kwarg": {"column": "chosen"},
                    "meta": {"reason": "r"},
                }
            ],
            "kwarg",
        ),
        (
            {},
            [
                {
                    "expectation": "expect_table_row_count_to_be_between",
                    "kwargs": {"min_value": "$min_row"},
                    "meta": {"reason": "r"},
                }
            ],
            "unknown threshold",
        ),
        (
            {},
            [
                {
                    "expectation": "expect_column_values_to_not_be_null",
                    "kwargs": {"column": "chosen"},
                }
            ],
            "meta.reason is required",
        ),
        ({}, [], "empty"),
    ],
)
def test_misspellings_fail_loudly(params, suite, error):
    with pytest.raises((TypeError, ValueError), match=error):
        config = DataValidationConfig(**params)
        parse_suite(BASE["data_validation_suite"] if suite is None else suite, config)


@pytest.fixture(scope="module")
def hh_preferences(hh_rlhf_file):
    return read_preferences(hh_rlhf_file, "hh_rlhf")


HH_BAD_LINES = {
    87: "chosen empty after stripping",
    517: "chosen empty after stripping",
    926: "chosen empty after stripping",
    1104: "chosen empty after stripping",
    1255: "prompt inconsistent",
    1689: "prompt inconsistent",
}


def test_real_hh_rlhf_quarantines_exactly_the_malformed_rows(hh_preferences):
    outcome = validate(hh_preferences, "quarantine")
    assert outcome.report["success"], outcome.report["problems"]
    bad = dict(
        zip(
            outcome.quarantined["source_line"].tolist(),
            outcome.quarantined["quarantine_reasons"],
            strict=True,
        )
    )
    assert bad == HH_BAD_LINES
    assert (
        len(outcome.good) == 1794
        and len(outcome.good) + len(outcome.quarantined) == len(hh_preferences) == 1800
    )
    assert outcome.report["reasons"] == {
        "chosen empty after stripping": 4,
        "prompt inconsistent": 2,
    }


def test_real_hh_rlhf_fails_strict_listing_both_expectations(hh_preferences):
    outcome = validate(hh_preferences, "strict")
    with pytest.raises(DataValidationError) as excinfo:
        raise_for_report(outcome.report)
    message = str(excinfo.value)
    assert "[chosen empty after stripping]: 4 of 1800 rows" in message
    assert "[prompt inconsistent]: 2 of 1800 rows" in message
    assert (
        "harmless-base-test.part1.jsonl.gz:87 " in message
        and "harmless-base-test.part1.jsonl.gz:1255 " in message
    )
