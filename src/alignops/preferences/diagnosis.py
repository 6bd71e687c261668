"""The slow reader: a preference file re-read record by record with the standard library.

Arrow refuses a whole file for one record it cannot type ("JSON parse error:
Column(/chosen) changed from string to number in row 0" of some block) or with a
duplicated key; ``datasets`` reports it vaguely or not at all. ``reread`` parses
the bytes record by record instead, so that it can

* stop on what breaks the file itself (bytes that are not UTF-8, text that is not
  JSON, a CSV row with the wrong number of fields), naming the line: record
  boundaries are not to be trusted past such a point;
* set aside, with a reason, the records that are not objects, hold a duplicated
  key, or whose types do not fit the file's other records;
* hand the rest back as one Arrow table, for the same vectorised format checks as
  the fast path.

It works on bytes, never opens a file, and runs only when the fast reader failed,
or for JSON arrays (which ``datasets`` also parses in Python, keeping the last of
duplicated keys without a word).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Hashable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from alignops.preferences.formats import PARSERS, detect_format
from alignops.preferences.record_checks import RecordError, json_type

_PYTHON_JSON_TYPES = {list: "list", str: "string", bool: "bool", int: "int", float: "float"}
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


class Problem(NamedTuple):
    number: int | None  # 1-based line, or record number when ``unit`` is "record"; None: the whole file
    reason: str
    unit: str = "line"


class FileProblem(Exception):
    """The file itself is broken at ``problem``: no record past it can be trusted."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


class Reread(NamedTuple):
    table: pa.Table  # the records that fit one Arrow table
    kept: np.ndarray  # for each table row, its index among all records
    numbers: np.ndarray  # the line (or record number) of every record
    unit: str  # "line" or "record"
    left_out: pd.DataFrame  # ``record`` (index among all records) and ``reason`` of the others
    records: list  # every record as parsed


def reread(data: bytes, kind: str, fmt: str) -> Reread:
    """A file's bytes (``kind``: jsonl | json | csv) as one table and the records left out of it.

    Raises ``FileProblem`` for a defect of the file itself. Records kept out are
    explained in ``fmt``'s own words where the kept ones show a format (``auto``).
    """
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        raise FileProblem(Problem(line, f"bytes that are not UTF-8 ({data[bad.start : bad.end + 3]!r})")) from None
    records, numbers, unit, suspects = _parse(kind, text)
    if not records:
        raise FileProblem(Problem(1, "the file holds no records"))
    left_out = {
        i: f"expected a JSON object, got {_python_type(r)}" for i, r in enumerate(records) if not isinstance(r, dict)
    }
    for i in suspects:
        if i not in left_out and (found := _duplicate(records[i])) is not None:
            left_out[i] = _duplicate_reason(*found)
    candidates = [i for i in range(len(records)) if i not in left_out]
    try:  # what a clean file (and every JSON array read here) does: all candidates fit one table
        table, kept, misfits = _table([records[i] for i in candidates]), candidates, []
    except _ARROW_ERRORS:
        kept, misfits = _fitting(records, candidates)
        table = _table([records[i] for i in kept])
    if misfits:
        left_out.update(_misfit_reasons(records, misfits, table.schema, _format_of(table, fmt)))
    order = sorted(left_out)
    return Reread(
        table=table,
        kept=np.asarray(kept, dtype=np.int64),
        numbers=np.asarray(numbers, dtype=np.int64),
        unit=unit,
        left_out=pd.DataFrame({"record": np.asarray(order, dtype=np.int64), "reason": [left_out[i] for i in order]}),
        records=records,
    )


class _Duplicated(dict):
    """A JSON object that named ``key`` more than once (the parser kept the last value)."""

    key: str = ""


class _ObjectHook:
    """``object_pairs_hook`` for ``json.loads``: marks objects with a duplicated key, and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict:
        value = dict(pairs)
        if len(value) == len(pairs):
            return value
        self.count += 1
        seen: set[str] = set()
        marked = _Duplicated(value)
        marked.key = next(k for k, _ in pairs if k in seen or seen.add(k))
        return marked


def _duplicate(value: Any, path: tuple = ()) -> tuple[str, tuple] | None:
    """The first duplicated key in a parsed value and the path (keys, list indices) to its object."""
    if isinstance(value, _Duplicated):
        return value.key, path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if (found := _duplicate(child, (*path, key))) is not None:
            return found
    return None


def _duplicate_reason(key: str, path: tuple) -> str:
    """The reason for a duplicated key: "duplicate key 'chosen'", or "... 'role' in element 2 of 'chosen'"."""
    where = " of ".join(f"element {step + 1}" if isinstance(step, int) else repr(step) for step in reversed(path))
    return f"duplicate key {key!r}" + (f" in {where}" if where else "")


def _parse(kind: str, text: str) -> tuple[list, list[int], str, list[int]]:
    """Records, their line (or record) numbers, the unit, and the records that may hold a duplicated key.

    A syntax error is raised with its line.
    """
    if kind == "csv":
        return (*_parse_csv(text), [])
    hook = _ObjectHook()
    if kind == "json":
        try:
            value = json.loads(text, object_pairs_hook=hook)
        except json.JSONDecodeError as bad:
            raise FileProblem(Problem(bad.lineno, f"invalid JSON: {bad.msg} (column {bad.colno})")) from None
        if not isinstance(value, list):
            raise FileProblem(Problem(1, "expected a JSON array of records, or one JSON object per line"))
        suspects = list(range(len(value))) if hook.count else []  # walked only when a duplicate was seen
        return value, list(range(1, len(value) + 1)), "record", suspects
    records, numbers, suspects = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # the fast reader skips blank lines too
        seen = hook.count
        try:
            records.append(json.loads(line, object_pairs_hook=hook))
        except json.JSONDecodeError as bad:
            raise FileProblem(Problem(number, f"invalid JSON: {bad.msg} (column {bad.colno})")) from None
        if hook.count > seen:
            suspects.append(len(records) - 1)
        numbers.append(number)
    return records, numbers, "line", suspects


def _parse_csv(text: str) -> tuple[list, list[int], str]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    records, numbers, previous = [], [], 0
    try:
        for fields in reader:
            start, previous = previous + 1, reader.line_num  # a quoted record may span lines
            if not fields:
                continue
            if header is None:
                header = fields
            elif len(fields) != len(header):
                reason = f"expected {len(header)} fields (as in the header), found {len(fields)}"
                raise FileProblem(Problem(start, reason))
            else:
                records.append(dict(zip(header, fields, strict=True)))
                numbers.append(start)
    except csv.Error as bad:
        raise FileProblem(Problem(reader.line_num, f"invalid CSV: {bad}")) from None
    return records, numbers, "line"


def _table(records: list[dict]) -> pa.Table:
    if not records:
        return pa.table({})
    return pa.Table.from_struct_array(pa.array(records))


def _shape(value: Any) -> Hashable:
    """What Arrow's type inference sees in a value; null fits anything, so it is left out."""
    if isinstance(value, dict):
        return "object", frozenset((k, s) for k, v in value.items() if (s := _shape(v)) != "null")
    if isinstance(value, list):
        return "list", frozenset(s for v in value if (s := _shape(v)) != "null")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"  # Arrow widens ints among floats to floats
    return type(value).__name__


def _fitting(records: list, candidates: list[int]) -> tuple[list[int], list[list[int]]]:
    """The candidates that fit one table, and the groups (of one shape each) that do not.

    Records are grouped by shape; the largest groups are taken first, so the file's
    common shape decides and the odd records are the misfits.
    """
    groups: dict[Hashable, list[int]] = {}
    for i in candidates:
        groups.setdefault(_shape(records[i]), []).append(i)
    examples: list[dict] = []
    kept: list[int] = []
    misfits: list[list[int]] = []
    for members in sorted(groups.values(), key=len, reverse=True):
        try:
            pa.array([*examples, records[members[0]]])
        except _ARROW_ERRORS:
            misfits.append(members)
            continue
        examples.append(records[members[0]])
        kept.extend(members)
    return sorted(kept), misfits


def _format_of(table: pa.Table, fmt: str) -> str | None:
    """The format the kept records are read as; None when they show none (ingestion then refuses the file)."""
    if fmt != "auto":
        return fmt
    try:
        return detect_format(table)
    except RecordError:
        return None


def _misfit_reasons(records: list, misfits: list[list[int]], schema: pa.Schema, fmt: str | None) -> dict[int, str]:
    """Why each record of each misfit group was left out, in the format's own words where it has them."""
    reasons: dict[int, str] = {}
    for members in misfits:
        try:
            group = _table([records[i] for i in members])
        except _ARROW_ERRORS as error:  # one record mixes types inside a list
            reasons.update({i: _mixed_types_reason(records[i], error) for i in members})
            continue
        try:
            said = PARSERS[fmt](group).quarantine if fmt is not None else None
        except RecordError:  # the group lacks a column the format needs
            said = None
        if said is not None:
            reasons.update(zip((members[r] for r in said["row"]), said["reason"], strict=True))
        reasons.update({i: _conflict_reason(records[i], schema) for i in members if i not in reasons})
    return reasons


def _conflict_reason(record: dict, schema: pa.Schema) -> str:
    """Which field holds a type the other records do not (a record fine on its own)."""
    for key, value in record.items():
        if value is None or key not in schema.names:
            continue
        expected = schema.field(key).type
        try:
            pa.array([value], type=expected)
        except _ARROW_ERRORS:
            return f"'{key}' is a {json_type(pa.array([value]).type)} here but a {json_type(expected)} in other records"
    return "its fields do not fit the types of the other records"


def _mixed_types_reason(record: dict, error: Exception) -> str:
    """Which field of one record holds values of different types (e.g. ``ranks: [1, "2"]``)."""
    for key, value in record.items():
        try:
            pa.array([value])
            continue
        except _ARROW_ERRORS:
            pass
        first_seen: dict[str | None, tuple[str, int]] = {}
        for position, element in enumerate(value if isinstance(value, list) else [], start=1):
            for field, item in element.items() if isinstance(element, dict) else [(None, element)]:
                if item is None:
                    continue
                kind = _python_type(item)
                earlier, at = first_seen.setdefault(field, (kind, position))
                if kind != earlier and {kind, earlier} != {"int", "float"}:
                    where = f"element {position}" if field is None else f"'{field}' of element {position}"
                    return f"'{key}' mixes value types: {where} is {kind}, but {earlier} in element {at}"
        return f"'{key}' mixes value types ({error})"
    return f"a field mixes value types ({error})"


def _python_type(value: object) -> str:
    if isinstance(value, dict):  # also an object with a duplicated key
        return "object"
    return _PYTHON_JSON_TYPES.get(type(value), "null" if value is None else type(value).__name__)
