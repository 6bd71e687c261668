"""Preference files of any supported format, read into the canonical preference table.

Files (jsonl, json, csv, parquet; text ones optionally gzipped) are read through
Hugging Face ``datasets`` into Arrow, then ``formats`` turns the records into
canonical rows. Reader errors are vague ("JSON parse error ... in row 1" of some
block), so only when one happens is the file re-read here, record by record, to
name the exact line and reason; the happy path never loops over rows in Python.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from alignops.preferences.diagnosis import locate_problem
from alignops.preferences.formats import FORMATS, PARSERS, detect_format
from alignops.preferences.record_checks import RecordError
from alignops.preferences.schema import as_canonical, empty_canonical

logger = logging.getLogger(__name__)

#: file suffix (before an optional .gz) -> how its records are laid out
SUFFIX_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_JSON_WHITESPACE = b" \t\r\n"


class IngestionError(Exception):
    """A preference file that cannot be ingested, with the place to fix it.

    ``line`` is the 1-based physical line (jsonl, csv) or record number (json
    arrays, parquet), or None when the problem is the file as a whole.
    """

    def __init__(self, path: str | Path, line: int | None, reason: str, unit: str = "line") -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        self.unit = unit
        where = self.path if line is None else f"{self.path} {unit} {line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple:  # survives pickling, e.g. out of a ParallelRunner worker
        return type(self), (self.path, self.line, self.reason, self.unit)


def read_preferences(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """One preference file as the canonical table; ``fmt`` is a format name or ``auto``.

    ``.attrs["ties_dropped"]`` counts tied k-wise responses that gave no pair.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    path = Path(path)
    kind = _kind(path)
    table = _load_table(path, kind, fmt)
    numbers, unit = _record_numbers(path, kind, table.num_rows)
    try:
        actual = detect_format(table) if fmt == "auto" else fmt
        parsed = PARSERS[actual](table)
    except RecordError as bad:
        raise IngestionError(path, int(numbers[bad.row]), bad.reason, unit) from None

    frame = parsed.frame
    lines = numbers[frame["row"].to_numpy()]
    frame["source"] = str(path)
    frame["source_format"] = actual
    frame["source_line"] = lines
    if actual == "kwise":  # pairs of one ranking share an item; a file line names one ranking
        derived = f"{path}:" + pd.Series(lines, dtype="string")
        frame["item_id"] = frame["item_id"].fillna(derived) if "item_id" in frame else derived
    canonical = as_canonical(frame)
    canonical.attrs["ties_dropped"] = parsed.ties_dropped
    logger.info(
        "Read %d %s rows from %s (%d records%s)", len(canonical), actual, path, table.num_rows,
        f", {parsed.ties_dropped} tied pairs dropped" if parsed.ties_dropped else "",
    )
    return canonical


def read_preference_files(paths: Sequence[str | Path], fmt: str = "auto") -> pd.DataFrame:
    """Several preference files, one canonical table, in the order given."""
    frames = [read_preferences(path, fmt) for path in paths]
    if not frames:
        return empty_canonical()
    table = as_canonical(pd.concat(frames, ignore_index=True))
    table.attrs["ties_dropped"] = sum(f.attrs.get("ties_dropped", 0) for f in frames)
    return table


def resolve_sources(filepath: str | Path | Sequence[str | Path]) -> list[Path]:
    """Paths and glob patterns (one or a list) as the files they name, patterns sorted."""
    entries = [filepath] if isinstance(filepath, (str, Path)) else list(filepath)
    paths: list[Path] = []
    for entry in entries:
        if glob.has_magic(str(entry)):
            matches = sorted(glob.glob(str(entry), recursive=True))
            if not matches:
                raise IngestionError(entry, None, "no file matches this pattern")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(entry))
    return paths


def ingestion_summary(preferences: pd.DataFrame) -> dict[str, Any]:
    """What a person checks after ingestion: rows per format, dropped ties, suspect prompts."""
    return {
        "rows": len(preferences),
        "rows_per_format": {str(k): int(v) for k, v in preferences["source_format"].value_counts().items()},
        "sources": int(preferences["source"].nunique()),
        "ties_dropped": int(preferences.attrs.get("ties_dropped", 0)),
        "inconsistent_prompts": int((~preferences["prompt_consistent"].fillna(True)).sum()),
    }


def _kind(path: Path) -> str:
    """jsonl | json (an array) | csv | parquet, from the suffix; a .json file of lines is jsonl."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    kind = SUFFIX_KINDS.get(Path(name.removesuffix(".gz")).suffix)
    if kind is None or (compressed and kind == "parquet"):  # parquet compresses inside the file
        expected = "expected .jsonl, .json or .csv, optionally gzipped, or .parquet"
        raise IngestionError(path, None, f"unsupported file type ({expected})")
    if not path.is_file():
        raise IngestionError(path, None, "no such file")
    if kind == "json" and _first_byte(path) != b"[":
        return "jsonl"
    return kind


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def _first_byte(path: Path) -> bytes:
    """The first non-whitespace byte, b"" for a blank file (reads only as far as it must)."""
    try:
        with _open(path) as stream:
            while chunk := stream.read(1 << 16):
                if stripped := chunk.lstrip(_JSON_WHITESPACE):
                    return stripped[:1]
    except (OSError, EOFError) as bad:
        raise IngestionError(path, None, f"cannot be read ({bad})") from None
    return b""


def _read_bytes(path: Path) -> bytes:
    try:
        with _open(path) as stream:
            return stream.read()
    except (OSError, EOFError) as bad:  # gzip.BadGzipFile is an OSError
        raise IngestionError(path, None, f"cannot be read ({bad})") from None


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars or reader error logs: failures are re-diagnosed and raised precisely."""
    bars_were_on = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _load_table(path: Path, kind: str, fmt: str) -> pa.Table:
    """The file's records as Arrow, read by ``datasets`` into memory with a throwaway cache."""
    import datasets  # slow to import; only needed when a file is actually read

    if (kind == "parquet" and path.stat().st_size == 0) or (kind != "parquet" and not _first_byte(path)):
        raise IngestionError(path, 1, "the file is empty (no records)")
    builder, options = {
        # mixed types in a column must fail loudly, not be JSON-encoded into strings
        "jsonl": ("json", {"on_mixed_types": None}),
        "json": ("json", {"on_mixed_types": None}),
        # text stays text: "NA", "None" or "" are answers, not missing values
        "csv": ("csv", {"na_filter": False}),
        "parquet": ("parquet", {}),
    }[kind]
    try:
        with _quiet(datasets), tempfile.TemporaryDirectory(prefix="alignops-ingest-") as cache:
            loaded = datasets.load_dataset(
                builder, data_files=str(path.resolve()), split="train", cache_dir=cache,
                keep_in_memory=True, **options,
            )
            table = loaded.data.table
        table.validate(full=True)  # the JSON reader lets bytes that are not UTF-8 through
    except Exception as error:
        raise _diagnose(path, kind, fmt, error) from error
    if table.num_rows == 0:
        raise IngestionError(path, 1, "the file holds no records")
    return table.replace_schema_metadata(None)


def _record_numbers(path: Path, kind: str, num_rows: int) -> tuple[np.ndarray, str]:
    """For each table row, its 1-based line in the file (jsonl, csv) or record number."""
    if kind in ("json", "parquet"):
        return np.arange(1, num_rows + 1), "record"
    data = _read_bytes(path)
    lines = _nonblank_lines(data)
    if kind == "csv":  # the header is line 1; quoted newlines make records span lines
        lines = lines[1:] if len(lines) == num_rows + 1 else _csv_record_lines(data.decode("utf-8"))
    if len(lines) != num_rows:
        logger.warning("%s: could not map records to lines; source_line holds record numbers", path)
        return np.arange(1, num_rows + 1), "record"
    return lines, "line"


def _nonblank_lines(data: bytes) -> np.ndarray:
    """1-based numbers of the lines holding anything but whitespace (readers skip the rest)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate(([0], newlines + 1))
    stops = np.concatenate((newlines, [len(buffer)]))
    blank = stops == starts
    # A record line starts with its first character; only lines starting with whitespace (rare)
    # need a closer look.
    first = buffer[np.minimum(starts, max(len(buffer) - 1, 0))] if len(buffer) else np.zeros(0, np.uint8)
    for i in np.flatnonzero(~blank & np.isin(first, list(_JSON_WHITESPACE))):
        blank[i] = not data[starts[i]:stops[i]].strip()
    return np.flatnonzero(~blank) + 1


def _csv_record_lines(text: str) -> np.ndarray:
    """The line each CSV record starts on, header excluded (records may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    starts, previous = [], 0
    for fields in reader:
        if fields:
            starts.append(previous + 1)
        previous = reader.line_num
    return np.asarray(starts[1:], dtype=np.int64)


def _diagnose(path: Path, kind: str, fmt: str, error: Exception) -> IngestionError:
    """The exact line and reason behind a vague reader error, found by re-reading the file slowly."""
    if kind == "parquet":
        return IngestionError(path, None, f"is not a readable parquet file ({_root(error)})")
    try:
        problem = locate_problem(_read_bytes(path), kind, fmt)
    except IngestionError as unreadable:
        return unreadable
    if problem is None:
        return IngestionError(path, None, f"could not be read ({_root(error)})")
    return IngestionError(path, *problem)


def _root(error: BaseException) -> str:
    """The innermost cause, which is where readers put the useful text."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return f"{type(error).__name__}: {error}"
