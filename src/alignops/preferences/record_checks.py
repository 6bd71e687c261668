"""Vectorised checks of Arrow columns, collected per offending record.

A check marks the records (or the items of list columns) that break a rule;
``Violations`` keeps every marked record with the reasons it broke, in the order
the checks ran, so a format can set those records aside and convert the rest.
Reasons speak JSON ("got int", "list of strings"), the language of the file the
user wrote.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

TEXT = pa.large_string()  # one text type throughout: json gives string, csv large_string
OPTIONAL_ID_COLUMNS = ("annotator_id", "item_id")
REASON_SEPARATOR = "; "  # between the reasons of one record, as in the validation gate's quarantine


class RecordError(ValueError):
    """The table as a whole breaks its format (a missing column, a column of the wrong type).

    ``row`` (0-based, in table order) is the first record that shows it, for the message.
    """

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"record {row}: {reason}")
        self.row = row
        self.reason = reason


class Violations:
    """Every offending record of a table, with the reasons of each, over all checks."""

    def __init__(self, num_rows: int) -> None:
        self.bad = np.zeros(num_rows, bool)
        """Which records broke at least one check so far."""
        self._rows: list[np.ndarray] = []
        self._reasons: list[np.ndarray] = []

    def add(
        self, bad: np.ndarray, reason: str | Callable[[int], str], rows: np.ndarray | None = None
    ) -> None:
        """``bad`` marks records, or items of list columns when ``rows`` maps each item to its record.

        ``reason`` may be a function of an index into ``bad``, to name the offending item; it is
        called at once, for the first marked item of each record (so only on bad records), and
        closures over loop variables are therefore safe.
        """
        hits = np.flatnonzero(bad)
        if not hits.size:
            return
        if rows is None:
            records, firsts = hits, hits
        else:  # item rows are non-decreasing: the first item of each record is where it changes
            records, first = np.unique(rows[hits], return_index=True)
            firsts = hits[first]
        if callable(reason):
            texts = np.array([reason(int(i)) for i in firsts], dtype=object)
        else:
            texts = np.full(len(records), reason, dtype=object)
        self.bad[records] = True
        self._rows.append(records)
        self._reasons.append(texts)

    def first(self) -> tuple[int, str] | None:
        """The earliest offending record and its first reason, as a reader top to bottom meets it."""
        if not self._rows:
            return None
        rows = np.concatenate(self._rows)
        earliest = int(np.argmin(rows))  # argmin takes the first of equals: the check that ran first
        return int(rows[earliest]), str(np.concatenate(self._reasons)[earliest])

    def good_rows(self) -> np.ndarray:
        """Indices of the records no check marked."""
        return np.flatnonzero(~self.bad)

    def quarantine(self) -> pd.DataFrame:
        """One row per offending record (``row``, ``reason``), reasons joined in check order."""
        if not self._rows:
            return pd.DataFrame({"row": np.zeros(0, np.int64), "reason": pd.Series(dtype="string")})
        marks = pd.DataFrame({"row": np.concatenate(self._rows), "reason": np.concatenate(self._reasons)})
        joined = marks.groupby("row", sort=True)["reason"].agg(lambda r: REASON_SEPARATOR.join(dict.fromkeys(r)))
        return pd.DataFrame({"row": joined.index.to_numpy(np.int64), "reason": joined.astype("string").to_numpy()})


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
    """A required column of the wrong type: every record is marked, nulls as missing, the rest as wrong."""
    if not pa.types.is_null(array.type):
        violations.add(valid(array), f"'{name}' must be {expected}, got {json_type(array.type)}")
    violations.add(~valid(array), f"'{name}' is missing or null")


def text_column(table: pa.Table, name: str, violations: Violations) -> pa.Array | None:
    """A required text column, or None when it is not one (then every record is marked)."""
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
