"""Vectorised checks of Arrow columns, reported as the earliest offending record.

A check marks the records (or the items of list columns) that break a rule; of
all checks on a table the earliest record wins, so the user is sent to the first
thing to fix, as a reader going top to bottom would be. Reasons speak JSON
("got int", "list of strings"), the language of the file the user wrote.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

TEXT = pa.large_string()  # one text type throughout: json gives string, csv large_string
OPTIONAL_ID_COLUMNS = ("annotator_id", "item_id")


class RecordError(ValueError):
    """Record ``row`` (0-based, in table order) breaks its format for ``reason``."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"record {row}: {reason}")
        self.row = row
        self.reason = reason


class Violations:
    """The earliest offending record over all checks of a table."""

    def __init__(self) -> None:
        self.row: int | None = None
        self.reason = ""

    def add(
        self, bad: np.ndarray, reason: str | Callable[[int], str], rows: np.ndarray | None = None
    ) -> None:
        """``bad`` marks records, or items of list columns when ``rows`` maps each item to its record.

        ``reason`` may be a function of the first bad index, to name the offending item; it is
        called at once, so closures over loop variables are safe.
        """
        hits = np.flatnonzero(bad)
        if not hits.size:
            return
        row = int(hits[0] if rows is None else rows[hits[0]])  # item rows are non-decreasing
        if self.row is None or row < self.row:
            self.row, self.reason = row, reason(int(hits[0])) if callable(reason) else reason

    def raise_first(self) -> None:
        if self.row is not None:
            raise RecordError(self.row, self.reason)


def is_text(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def is_list(data_type: pa.DataType) -> bool:
    return pa.types.is_list(data_type) or pa.types.is_large_list(data_type)


_JSON_NAMES = (
    (is_text, "string"), (pa.types.is_boolean, "bool"), (pa.types.is_integer, "int"),
    (pa.types.is_floating, "float"), (pa.types.is_null, "null"), (pa.types.is_struct, "object"),
)


def json_type(data_type: pa.DataType) -> str:
    """What a JSON author would call a value of this Arrow type."""
    if is_list(data_type):
        return f"list of {json_type(data_type.value_type)}s"
    return next((name for is_type, name in _JSON_NAMES if is_type(data_type)), str(data_type))


def column(table: pa.Table, name: str) -> pa.Array:
    # one contiguous array: list_parent_indices on a chunked array counts per chunk
    return table.column(name).combine_chunks()


def mask(array: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, null counting as False."""
    return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def valid(array: pa.Array) -> np.ndarray:
    """Which values are not null."""
    return mask(array.is_valid())


def check_type(violations: Violations, array: pa.Array, name: str, expected: str) -> None:
    """Null is reported as missing; any other value as the wrong type."""
    if pa.types.is_null(array.type):
        violations.add(np.ones(len(array), bool), f"'{name}' is missing or null")
    else:
        violations.add(valid(array), f"'{name}' must be {expected}, got {json_type(array.type)}")


def text_column(table: pa.Table, name: str, violations: Violations) -> pa.Array | None:
    """A required text column, or None (with a violation) when it is not one."""
    array = column(table, name)
    if not is_text(array.type):
        check_type(violations, array, name, "a string")
        return None
    violations.add(~valid(array), f"'{name}' is missing or null")
    return array.cast(TEXT)


def optional_ids(table: pa.Table, violations: Violations) -> dict[str, pd.Series]:
    """Annotator and item ids, kept as strings whatever scalar type the source used."""
    ids = {}
    for name in OPTIONAL_ID_COLUMNS:
        if name not in table.column_names:
            continue
        array = column(table, name)
        if not (is_text(array.type) or pa.types.is_integer(array.type) or pa.types.is_null(array.type)):
            violations.add(valid(array), f"'{name}' must be a string or an int, got {json_type(array.type)}")
            continue
        ids[name] = array.cast(TEXT).to_pandas()
    return ids


def optional_number(table: pa.Table, name: str, violations: Violations) -> pd.Series | None:
    """A numeric column that may be absent or null; CSV hands it over as text."""
    if name not in table.column_names:
        return None
    array = column(table, name)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_null(array.type):
        return array.cast(pa.float64()).to_pandas().astype("Float64")
    if is_text(array.type):
        text = array.to_pandas().str.strip()
        numbers = pd.to_numeric(text.mask(text == ""), errors="coerce").astype("Float64")
        unparsed = (numbers.isna() & text.notna() & (text != "")).to_numpy()
        violations.add(unparsed, lambda i: f"'{name}' must be a number, got {text.iloc[i]!r}")
        return numbers
    violations.add(valid(array), f"'{name}' must be a number, got {json_type(array.type)}")
    return None
