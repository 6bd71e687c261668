"""Where a preference file breaks, found the slow way — only after a fast reader failed.

``datasets``/pyarrow report "JSON parse error ... in row 1" of some internal block,
or just "Expected object or value". ``locate_problem`` re-reads the file's bytes
record by record with the standard library and the same format checks as the
fast path, and returns the first line (or record) to fix and why. It works on
bytes, never opens a file, and is never called on the happy path.
"""

from __future__ import annotations

import csv
import io
import json
from typing import NamedTuple

import pyarrow as pa

from alignops.preferences.formats import PARSERS, detect_format
from alignops.preferences.record_checks import RecordError, json_type

_PYTHON_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "bool", int: "int", float: "float"}


class Problem(NamedTuple):
    number: int | None  # 1-based line, or record number when ``unit`` is "record"; None: the whole file
    reason: str
    unit: str = "line"


class _Found(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


def locate_problem(data: bytes, kind: str, fmt: str) -> Problem | None:
    """The first problem in a file's bytes (``kind``: jsonl | json | csv), or None if none is found."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        return Problem(line, f"bytes that are not UTF-8 ({data[bad.start:bad.end + 3]!r})")
    try:
        records, numbers, unit = _parse(kind, text)
    except _Found as found:
        return found.problem
    if not records:
        return Problem(1, "the file holds no records")
    try:
        _check_records(records, fmt)
    except RecordError as found:
        return Problem(numbers[found.row], found.reason, unit)
    return None


def _parse(kind: str, text: str) -> tuple[list, list[int], str]:
    """Records with their line (or record) numbers; a syntax error is raised with its line."""
    if kind == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as bad:
            raise _Found(Problem(bad.lineno, f"invalid JSON: {bad.msg} (column {bad.colno})")) from None
        if not isinstance(value, list):
            raise _Found(Problem(1, "expected a JSON array of records, or one JSON object per line"))
        return value, list(range(1, len(value) + 1)), "record"
    if kind == "csv":
        return _parse_csv(text)
    records, numbers = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # the fast reader skips blank lines too
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as bad:
            raise _Found(Problem(number, f"invalid JSON: {bad.msg} (column {bad.colno})")) from None
        numbers.append(number)
    return records, numbers, "line"


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
                raise _Found(Problem(start, reason))
            else:
                records.append(dict(zip(header, fields, strict=True)))
                numbers.append(start)
    except csv.Error as bad:
        raise _Found(Problem(reader.line_num, f"invalid CSV: {bad}")) from None
    return records, numbers, "line"


def _check_records(records: list, fmt: str) -> None:
    """Raise ``RecordError`` (index into ``records``) for the first record that breaks its format."""
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RecordError(i, f"expected a JSON object, got {_python_type(record)}")
    try:
        table = pa.Table.from_struct_array(pa.array(records))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        _check_one_by_one(records, fmt)  # some field's type differs between records
        return
    PARSERS[detect_format(table) if fmt == "auto" else fmt](table)


def _check_one_by_one(records: list[dict], fmt: str) -> None:
    """Each record on its own, then whether its types agree with the records before it."""
    first_format = None
    seen: dict[str, str] = {}
    for i, record in enumerate(records):
        try:
            table = pa.Table.from_struct_array(pa.array([record]))
            record_format = detect_format(table) if fmt == "auto" else fmt
            PARSERS[record_format](table)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as bad:
            raise RecordError(i, _mixed_types_reason(record, bad)) from None
        except RecordError as bad:
            raise RecordError(i, bad.reason) from None
        first_format = first_format or record_format
        if record_format != first_format:
            raise RecordError(i, f"a {record_format} record, but earlier records are {first_format}")
        for field in table.schema:
            kind = json_type(field.type).replace("float", "number").replace("int", "number")
            if kind != "null" and seen.setdefault(field.name, kind) != kind:
                earlier = seen[field.name]
                raise RecordError(i, f"'{field.name}' is a {kind} here but a {earlier} in earlier records")


def _mixed_types_reason(record: dict, error: Exception) -> str:
    """Which field of one record holds values of different types (e.g. ``ranks: [1, "2"]``)."""
    for key, value in record.items():
        try:
            pa.array([value])
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
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
    return _PYTHON_JSON_TYPES.get(type(value), "null" if value is None else type(value).__name__)
