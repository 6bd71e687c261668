"""The validation suite: GX expectations kept as configuration, and the derived columns they check.

The suite lives in ``conf/base/parameters_data_validation.yml`` as a list of
``{expectation, kwargs, meta: {reason}}`` entries and becomes real GX expectation
objects by name. Checks that need a computed value (stripped lengths, token counts,
chosen != rejected, the duplicate flag, annotator shares) point at derived columns
that :func:`add_derived_columns` adds to a copy of the table before GX runs.

The report, the quarantine split and the gate built on these pieces are in
:mod:`alignops.preferences.validation`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.exceptions import ExpectationNotFoundError
from great_expectations.expectations.expectation import (
    ColumnMapExpectation,
    ColumnPairMapExpectation,
    Expectation,
    MulticolumnMapExpectation,
)
from great_expectations.expectations.registry import get_expectation_impl

from alignops.preferences.schema import REQUIRED_TEXT_COLUMNS

MODES = ("strict", "quarantine")
SUITE_NAME = "preferences"
ALL_ROWS, GOOD_ROWS = "all_rows", "good_rows"  # the two validation runs, as Data Docs names them

#: Map expectations judge each row; their failing rows can be quarantined one by one.
_ROW_LEVEL_BASES = (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)

#: A tokenizer-free proxy: runs of word characters, or one punctuation mark. Subword
#: tokenizers give somewhat more; set ``tokenizer_path`` when the limit must be exact.
WORD_OR_PUNCT = r"\w+|[^\w\s]"

#: The same prompt/chosen/rejected from the same annotator is one labelling act recorded twice.
DUPLICATE_KEY = ("prompt", "chosen", "rejected", "annotator_id")

#: Derived column -> the canonical columns it is computed from (error examples show them too).
DERIVED_FROM: dict[str, tuple[str, ...]] = {
    **{
        f"{c}_stripped_chars": (c,) for c in REQUIRED_TEXT_COLUMNS
    },  # length after .strip(); 0 = empty
    **{f"{c}_tokens": (c,) for c in REQUIRED_TEXT_COLUMNS},  # token count (regex or tokenizer.json)
    "chosen_differs": ("chosen", "rejected"),  # chosen != rejected
    "is_duplicate_pair": DUPLICATE_KEY,  # a later repeat of DUPLICATE_KEY; the first one is kept
    "annotator_share": (
        "annotator_id",
    ),  # share of the labelled rows that this row's annotator made
}


#: Config fields the suite may cite as ``$name`` so environments tune limits, not the suite.
THRESHOLDS = (
    "min_rows",
    "max_prompt_chars",
    "max_response_chars",
    "max_prompt_tokens",
    "max_response_tokens",
    "max_annotator_share",
)


class DataValidationError(RuntimeError):
    """The preference table failed the validation gate; the message lists what and where."""


@dataclass(frozen=True)
class DataValidationConfig:
    """Mirrors ``data_validation`` in ``conf/base/parameters_data_validation.yml`` one to one.

    The defaults equal the base YAML (a test keeps them in step), so the config is
    usable outside Kedro too; in a run, environments override single keys of the YAML.
    """

    mode: str = "quarantine"
    """``strict``: any failed expectation stops the run. ``quarantine``: rows failing a
    row-level expectation are set aside with their reasons and the rest go on."""
    max_bad_fraction: float = 0.05
    """Quarantine mode fails when more than this share of the rows is quarantined."""
    min_rows: int = 100
    """Fewest rows (good rows, in quarantine mode) worth training on."""
    max_prompt_chars: int = 4000
    """Longest prompt in characters; HH-RLHF's longest prompt is ~3.5k."""
    max_response_chars: int = 3000
    """Longest chosen/rejected response in characters; HH-RLHF's longest is ~2.5k."""
    max_prompt_tokens: int = 1024
    """Longest prompt in tokens."""
    max_response_tokens: int = 1024
    """Longest chosen/rejected response in tokens."""
    max_annotator_share: float = 0.5
    """No annotator may have labelled more than this share of the rows with a known annotator."""
    tokenizer_path: str | None = None
    """A Hugging Face ``tokenizer.json`` to count tokens with; ``None`` counts regex words."""
    max_examples: int = 3
    """Example rows per failed expectation in the report and the error message."""
    max_value_chars: int = 80
    """Offending values are cut to this many characters in examples."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"data_validation.mode must be one of {MODES}, got {self.mode!r}")
        for name in ("max_bad_fraction", "max_annotator_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data_validation.{name} must lie in [0, 1]")
        for name in ("min_rows", "max_examples", "max_value_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"data_validation.{name} must be >= 0")
        for name in (
            "max_prompt_chars",
            "max_response_chars",
            "max_prompt_tokens",
            "max_response_tokens",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"data_validation.{name} must be > 0")


@dataclass(frozen=True)
class ExpectationSpec:
    """One entry of ``data_validation_suite``: a GX expectation by name, with its arguments."""

    expectation: str
    """GX snake-case name, e.g. ``expect_column_values_to_not_be_null``."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The expectation's arguments, with ``$threshold`` references already resolved."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Free-form GX meta; ``reason`` is required: it is what a quarantined row is tagged with."""

    def __post_init__(self) -> None:
        try:
            get_expectation_impl(self.expectation)
        except ExpectationNotFoundError:
            raise ValueError(
                f"unknown Great Expectations expectation {self.expectation!r}"
            ) from None
        if not str(self.meta.get("reason", "")).strip():
            raise ValueError(f"{self.expectation} {dict(self.kwargs)}: meta.reason is required")
        self.build()  # a misspelt argument fails here (GX models forbid extra fields), not mid-run

    @property
    def reason(self) -> str:
        return str(self.meta["reason"])

    @property
    def row_level(self) -> bool:
        return issubclass(get_expectation_impl(self.expectation), _ROW_LEVEL_BASES)

    @property
    def label(self) -> str:
        arguments = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.expectation}({arguments})"

    def build(self) -> Expectation:
        notes = f"`{self.expectation}` - {self.reason}"  # Data Docs show notes, not type names
        return get_expectation_impl(self.expectation)(
            **self.kwargs, meta=dict(self.meta), notes=notes
        )


def parse_suite(
    entries: Sequence[Mapping[str, Any]], config: DataValidationConfig
) -> list[ExpectationSpec]:
    """Turn the YAML suite into specs, replacing ``"$name"`` values by config thresholds."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("$"):
            if value[1:] not in THRESHOLDS:
                raise ValueError(f"unknown threshold {value!r} in the suite; known: {THRESHOLDS}")
            return getattr(config, value[1:])
        return value

    specs = []
    for entry in entries:
        entry = dict(entry)
        entry["kwargs"] = {k: resolve(v) for k, v in (entry.get("kwargs") or {}).items()}
        entry["meta"] = entry.get("meta") or {}  # `meta:` left empty in YAML is None
        specs.append(ExpectationSpec(**entry))
    if not specs:
        raise ValueError("data_validation_suite is empty: nothing would be validated")
    return specs


def regex_token_counts(text: pd.Series) -> pd.Series:
    """Words and punctuation marks per value; <NA> stays <NA>."""
    return text.astype("string").str.count(WORD_OR_PUNCT).astype("Int64")


def token_counter(tokenizer_path: str | None) -> Callable[[pd.Series], pd.Series]:
    """The regex counter, or one backed by a ``tokenizers`` tokenizer.json (batch-encoded)."""
    if tokenizer_path is None:
        return regex_token_counts
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))

    def count(text: pd.Series) -> pd.Series:
        known = text.dropna()
        encodings = tokenizer.encode_batch(known.astype(str).tolist(), add_special_tokens=False)
        counts = pd.Series([len(e.ids) for e in encodings], index=known.index, dtype="Int64")
        return counts.reindex(text.index)

    return count


def annotator_share(annotator: pd.Series) -> pd.Series:
    """Each row's annotator's share of the rows whose annotator is known; 0 when unknown.

    Unknown annotators are nobody: they neither count in the denominator nor dominate.
    """
    counts = annotator.dropna().value_counts()
    shares = annotator.map(counts / max(int(counts.sum()), 1))
    return shares.astype("Float64").fillna(0.0)


def add_derived_columns(
    frame: pd.DataFrame, count_tokens: Callable[[pd.Series], pd.Series]
) -> pd.DataFrame:
    """A copy of ``frame`` (fresh 0..n-1 index) plus the derived columns of :data:`DERIVED_FROM`.

    A derived column is left out when its source column is missing, so the
    expectations on it fail loudly in GX instead of being computed from nothing.
    """
    out = frame.reset_index(drop=True).copy()
    present = set(out.columns)
    for column in (c for c in REQUIRED_TEXT_COLUMNS if c in present):
        text = out[column].astype("string")
        out[f"{column}_stripped_chars"] = text.str.strip().str.len().astype("Int64")
        out[f"{column}_tokens"] = count_tokens(text)
    if {"chosen", "rejected"} <= present:
        out["chosen_differs"] = (
            out["chosen"].astype("string") != out["rejected"].astype("string")
        ).astype("boolean")
    if set(DUPLICATE_KEY) <= present:
        # pandas treats <NA> as equal to <NA> here: unknown annotators are one "unknown" annotator
        out["is_duplicate_pair"] = out.duplicated(subset=list(DUPLICATE_KEY), keep="first").astype(
            "boolean"
        )
    if "annotator_id" in present:
        out["annotator_share"] = annotator_share(out["annotator_id"])
    return out


def ephemeral_context(**config: Any) -> gx.data_context.AbstractDataContext:
    """An in-memory GX context: no files, no analytics, no progress bars, no default docs site."""
    project_config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        **config,
    )
    return gx.get_context(mode="ephemeral", project_config=project_config)


def run_suite(
    frame: pd.DataFrame, specs: Sequence[ExpectationSpec], run_name: str
) -> tuple[ExpectationSuiteValidationResult, gx.ExpectationSuite]:
    """Validate the whole ``frame``, with COMPLETE results (failing row indices included)."""
    context = ephemeral_context()
    batch = (
        context.data_sources.add_pandas("alignops")
        .add_dataframe_asset("preferences")
        .add_batch_definition_whole_dataframe("whole_table")
    )
    suite = context.suites.add(
        gx.ExpectationSuite(name=SUITE_NAME, expectations=[s.build() for s in specs])
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=run_name, data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format="COMPLETE",
        run_id=RunIdentifier(run_name=run_name),
    )
    return result, suite


def results_by_spec(
    result: ExpectationSuiteValidationResult,
    suite: gx.ExpectationSuite,
    specs: Sequence[ExpectationSpec],
) -> list[tuple[ExpectationSpec, ExpectationValidationResult]]:
    """Pair each spec with its result; GX does not keep the suite's order in its results."""
    spec_by_id = {
        expectation.id: spec for expectation, spec in zip(suite.expectations, specs, strict=True)
    }
    by_id = {r.expectation_config.id: r for r in result.results}
    return [(spec_by_id[i], by_id[i]) for i in spec_by_id]


def unexpected_rows(result: ExpectationValidationResult) -> list[int]:
    """Row positions a map expectation rejected; empty for table-level or errored ones."""
    return [int(i) for i in (result.result or {}).get("unexpected_index_list") or []]


def error_message(result: ExpectationValidationResult) -> str | None:
    """GX nests errors per metric when a metric fails (a missing column, say)."""
    info = result.exception_info or {}
    infos = [info] if "raised_exception" in info else list(info.values())
    messages = [
        i.get("exception_message")
        for i in infos
        if isinstance(i, dict) and i.get("raised_exception")
    ]
    return "; ".join(dict.fromkeys(m for m in messages if m)) or None  # one per failed metric
