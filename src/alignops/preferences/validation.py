"""The validation gate between ingestion and training.

:func:`validate_preferences` runs the Great Expectations suite (see
:mod:`alignops.preferences.validation_suite`) and never raises on bad data: it returns a
JSON report, the GX results for Data Docs, the good rows and the quarantined rows
(each tagged with every reason it failed), so the catalog saves them all.
:func:`raise_for_report` is the gate that afterwards stops the run per the mode:

* ``strict``: any failed expectation fails the run;
* ``quarantine``: failing rows are set aside; the run fails only when too many rows
  were set aside, or when the good rows fail an expectation (too few rows, one
  annotator dominating, a missing column).

Every input row ends up in exactly one of the good rows and the quarantine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from great_expectations.core.expectation_validation_result import ExpectationValidationResult

from alignops.preferences.validation_suite import (
    ALL_ROWS,
    DERIVED_FROM,
    GOOD_ROWS,
    SUITE_NAME,
    THRESHOLDS,
    DataValidationConfig,
    DataValidationError,
    ExpectationSpec,
    add_derived_columns,
    error_message,
    parse_suite,
    results_by_spec,
    run_suite,
    token_counter,
    unexpected_rows,
)

__all__ = [
    "THRESHOLDS",
    "DataValidationConfig",
    "DataValidationError",
    "ExpectationSpec",
    "ValidationOutcome",
    "add_derived_columns",
    "failure_message",
    "parse_suite",
    "raise_for_report",
    "validate_preferences",
]

REASONS_COLUMN = "quarantine_reasons"
REASON_SEPARATOR = "; "

_Checked = list[tuple[ExpectationSpec, ExpectationValidationResult]]


@dataclass(frozen=True)
class ValidationOutcome:
    """Everything the validation node hands to the catalog."""

    report: dict[str, Any]
    """JSON-ready verdict, counts, per-expectation results and reasons histogram."""
    data_docs: dict[str, Any]
    """The GX suite and validation results as JSON, for ``DataDocsDataset``."""
    good: pd.DataFrame
    """Rows that passed every row-level expectation, with the input's columns."""
    quarantined: pd.DataFrame
    """The other rows, with the input's columns plus ``quarantine_reasons``."""


def validate_preferences(
    frame: pd.DataFrame, config: DataValidationConfig, specs: Sequence[ExpectationSpec]
) -> ValidationOutcome:
    """Run the suite on ``frame``; split it into good and quarantined rows. Never raises on data."""
    count_tokens = token_counter(config.tokenizer_path)
    derived = add_derived_columns(frame, count_tokens)
    result, suite = run_suite(derived, specs, ALL_ROWS)
    checked = results_by_spec(result, suite, specs)

    reasons = quarantine_reasons(checked, len(derived))
    bad = reasons.notna().to_numpy()
    rows = frame.reset_index(drop=True)
    good = rows[~bad].reset_index(drop=True)
    quarantined = rows[bad].assign(**{REASONS_COLUMN: reasons[bad]}).reset_index(drop=True)

    runs = {ALL_ROWS: (result.success, checked, derived)}
    docs = [result.to_json_dict()]
    if config.mode == "quarantine":
        # Table-level checks (row count, annotator dominance) must judge what training will
        # get; row-level ones pass on the good rows by construction, so they are not re-run.
        table_specs = [s for s in specs if not s.row_level]
        good_derived = add_derived_columns(good, count_tokens)
        good_result, good_suite = run_suite(good_derived, table_specs, GOOD_ROWS)
        runs[GOOD_ROWS] = (
            good_result.success,
            results_by_spec(good_result, good_suite, table_specs),
            good_derived,
        )
        docs.append(good_result.to_json_dict())

    report = build_report(runs, reasons, config)
    return ValidationOutcome(
        report=report,
        data_docs={"suite": suite.to_json_dict(), "validations": docs},
        good=good,
        quarantined=quarantined,
    )


def quarantine_reasons(checked: _Checked, n_rows: int) -> pd.Series:
    """Per row, the reasons of every row-level expectation it failed, in order; <NA> if none."""
    reasons = pd.Series(pd.NA, index=pd.RangeIndex(n_rows), dtype="string")
    for spec, result in checked:
        rows = unexpected_rows(result)
        if spec.row_level and rows:
            flagged = reasons.iloc[rows]
            # <NA> + text stays <NA>, so a row's first reason comes from the fillna
            reasons.iloc[rows] = (flagged + REASON_SEPARATOR + spec.reason).fillna(spec.reason)
    return reasons


def build_report(
    runs: Mapping[str, tuple[bool, _Checked, pd.DataFrame]],
    reasons: pd.Series,
    config: DataValidationConfig,
) -> dict[str, Any]:
    _, all_checked, all_rows = runs[ALL_ROWS]
    n_rows, n_bad = len(all_rows), int(reasons.notna().sum())
    bad_fraction = n_bad / n_rows if n_rows else 0.0

    problems: list[str] = []
    if config.mode == "strict":
        problems += [
            _describe_failure(s, r, all_rows, config) for s, r in all_checked if not r.success
        ]
    else:
        row_failures = [(s, r) for s, r in all_checked if s.row_level and not r.success]
        if bad_fraction > config.max_bad_fraction:
            problems.append(
                f"{n_bad} of {n_rows} rows ({bad_fraction:.1%}) fail a row-level expectation, "
                f"above max_bad_fraction {config.max_bad_fraction:.1%}:"
            )
            problems += [_describe_failure(s, r, all_rows, config) for s, r in row_failures]
        else:  # a row-level check that could not run (a missing column) quarantined nothing
            problems += [
                _describe_failure(s, r, all_rows, config)
                for s, r in row_failures
                if error_message(r)
            ]
        _, good_checked, good_rows = runs[GOOD_ROWS]
        problems += [
            f"on the good rows: {_describe_failure(s, r, good_rows, config)}"
            for s, r in good_checked
            if not r.success
        ]

    return {
        "success": not problems,
        "mode": config.mode,
        "suite": SUITE_NAME,
        "input_rows": n_rows,
        "good_rows": n_rows - n_bad,
        "bad_rows": n_bad,
        "bad_fraction": bad_fraction,
        "max_bad_fraction": config.max_bad_fraction,
        "reasons": _reason_counts(all_checked),
        "problems": problems,
        "runs": {
            name: {
                "success": bool(success),
                "rows": len(frame),
                "expectations": [_summarise(s, r, frame, config) for s, r in checked],
            }
            for name, (success, checked, frame) in runs.items()
        },
    }


def raise_for_report(report: Mapping[str, Any]) -> None:
    """The gate: raise :class:`DataValidationError` when the report says the data failed."""
    if not report["success"]:
        raise DataValidationError(failure_message(report))


def failure_message(report: Mapping[str, Any]) -> str:
    head = (
        f"Preference data failed validation in {report['mode']} mode: {report['input_rows']} rows, "
        f"{report['bad_rows']} of them failing a row-level expectation "
        f"({report['bad_fraction']:.1%})."
    )
    tail = "The validation_report and validation_data_docs datasets hold the full results."
    return "\n".join([head, *(f"- {p}" for p in report["problems"]), tail])


def _reason_counts(checked: _Checked) -> dict[str, int]:
    """Rows flagged per reason (a row with two reasons counts under both)."""
    flagged: dict[str, set[int]] = {}
    for spec, result in checked:
        if spec.row_level:
            flagged.setdefault(spec.reason, set()).update(unexpected_rows(result))
    return {reason: len(rows) for reason, rows in flagged.items() if rows}


def _summarise(
    spec: ExpectationSpec,
    result: ExpectationValidationResult,
    frame: pd.DataFrame,
    config: DataValidationConfig,
) -> dict[str, Any]:
    details = result.to_json_dict().get("result") or {}
    return {
        "expectation": spec.expectation,
        "kwargs": dict(spec.kwargs),
        "reason": spec.reason,
        "row_level": spec.row_level,
        "success": bool(result.success),
        "unexpected_count": details.get("unexpected_count"),
        "observed_value": _json_ready(details.get("observed_value")),
        "error": error_message(result),
        "examples": _examples(
            spec, unexpected_rows(result)[: config.max_examples], frame, config.max_value_chars
        ),
    }


def _describe_failure(
    spec: ExpectationSpec,
    result: ExpectationValidationResult,
    frame: pd.DataFrame,
    config: DataValidationConfig,
) -> str:
    text = f"{spec.label} [{spec.reason}]"
    error = error_message(result)
    if error:
        return f"{text}: could not be evaluated: {error}"
    rows = unexpected_rows(result)
    if not rows:  # a table-level check: what GX saw is the evidence
        observed = _json_ready((result.result or {}).get("observed_value"))
        return f"{text}: failed" if observed is None else f"{text}: observed {observed!r}"
    examples = _examples(spec, rows[: config.max_examples], frame, config.max_value_chars)
    shown = "; ".join(
        f"{e['source']}:{e['source_line']} " + " ".join(f"{c}={v}" for c, v in e["values"].items())
        for e in examples
    )
    return f"{text}: {len(rows)} of {len(frame)} rows" + (f", e.g. {shown}" if shown else "")


def _examples(
    spec: ExpectationSpec, rows: list[int], frame: pd.DataFrame, max_chars: int
) -> list[dict[str, Any]]:
    """Where the first offending rows came from and what they held."""
    if not rows:
        return []
    checked = [spec.kwargs.get("column"), spec.kwargs.get("column_A"), spec.kwargs.get("column_B")]
    checked += list(spec.kwargs.get("column_list") or [])
    shown = list(
        dict.fromkeys(
            c for col in checked if col for c in (col, *DERIVED_FROM.get(col, ())) if c in frame
        )
    )
    picked = frame.iloc[rows].reindex(columns=["source", "source_line", *shown])
    return [
        {
            "source": _plain(record["source"]),
            "source_line": _plain(record["source_line"]),
            "values": {c: _preview(record[c], max_chars) for c in shown},
        }
        for record in picked.to_dict("records")
    ]


def _json_ready(value: Any) -> Any:
    """GX observed values may hold numpy scalars; the report is JSON."""
    return json.loads(
        json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    )


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: <NA> -> None, numpy scalars -> Python."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _preview(value: Any, max_chars: int) -> str:
    """The value as a reader should see it: strings quoted (so '' and '  ' show) and cut short."""
    value = _plain(value)
    if isinstance(value, str):
        return repr(value if len(value) <= max_chars else value[:max_chars] + "...")
    return "<NA>" if value is None else str(value)
