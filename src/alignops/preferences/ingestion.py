"""Preference files of any supported format, read into the canonical preference table.

Files (jsonl, csv, parquet; text ones optionally gzipped) are read through Hugging
Face ``datasets`` into Arrow, then ``formats`` turns the records into canonical
rows; the happy path never loops over rows in Python. Only when the fast reader
fails (a record Arrow cannot type, a duplicated key, bad bytes) is the file
re-read record by record (``diagnosis.reread``); JSON arrays always are, because
``datasets`` parses them in Python too and keeps the last of duplicated keys
without a word.

Bad rows are quarantined, bad files are refused. A record that breaks its format
(a null ``chosen``, a number where text belongs, a duplicated key) is set aside
with its file, line and reason, and the file's other records go on. What breaks
the file itself (not UTF-8, not JSON or CSV, a missing column, an unreadable
archive), or a file whose records are mostly broken (the wrong ``format``, say),
stops ingestion with an ``IngestionError`` naming the file and the line.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from alignops.preferences.diagnosis import FileProblem, reread
from alignops.preferences.formats import FORMATS, PARSERS, detect_format
from alignops.preferences.record_checks import RecordError
from alignops.preferences.schema import as_canonical, empty_canonical

logger = logging.getLogger(__name__)

#: file suffix (before an optional .gz) -> how its records are laid out
SUFFIX_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_JSON_WHITESPACE = b" \t\r\n"

MAX_QUARANTINED_FRACTION = 0.05
"""A file with a larger share of malformed records is refused whole, not quarantined.

Real exports have a few broken records; when more than this share of a file is broken,
the file is (a wrong ``format``, a truncated or mis-encoded export), and quarantining most
of it would hide that. Five per cent is also the validation gate's default
``max_bad_fraction``, the share of bad rows past which a source counts as broken rather
than noisy. A file whose every record is malformed is refused whatever the setting. The
catalog entry's ``max_quarantined_fraction`` overrides it, file by file.
"""

#: column -> dtype of the ingestion quarantine: one row per record set aside.
QUARANTINE_DTYPES: dict[str, str] = {
    "source": "string",  # the file, as in the canonical table
    "source_format": "string",  # the format the file was read as
    "source_line": "Int64",  # 1-based line (jsonl/csv) or record number (json/parquet), as in the canonical table
    "quarantine_reasons": "string",  # every reason, "; "-separated, as in the validation gate's quarantine
    "record": "string",  # the record: its text (jsonl/csv lines) or its fields as JSON (json/parquet)
}


class Ingested(NamedTuple):
    """What ingestion read from preference files: the good rows and the records set aside."""

    preferences: pd.DataFrame
    """The canonical table of the good records; ``.attrs["ties_dropped"]`` as in ``read_preferences``."""
    quarantine: pd.DataFrame
    """One row per malformed record, with ``QUARANTINE_DTYPES`` columns."""


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in QUARANTINE_DTYPES.items()})


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


def read_preferences(
    path: str | Path, fmt: str = "auto", max_quarantined_fraction: float = MAX_QUARANTINED_FRACTION
) -> pd.DataFrame:
    """One preference file's good records as the canonical table; ``fmt`` is a format name or ``auto``.

    ``.attrs["ties_dropped"]`` counts tied k-wise responses that gave no pair. Malformed
    records are left out with a warning; ``read_source`` returns them too.
    """
    return read_source(path, fmt, max_quarantined_fraction).preferences


def read_source(
    path: str | Path, fmt: str = "auto", max_quarantined_fraction: float = MAX_QUARANTINED_FRACTION
) -> Ingested:
    """One preference file: the canonical table of its good records, and its malformed ones.

    Raises ``IngestionError`` when the file itself is broken, or when more than
    ``max_quarantined_fraction`` of its records (or all of them) are malformed.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    path = Path(path)
    kind = _kind(path)
    loaded = _load(path, kind, fmt)
    numbers, kept = loaded.numbers, loaded.kept
    if not loaded.table.num_rows:  # no record fits any table
        _refuse_if_broken(path, loaded, loaded.left_out, fmt, max_quarantined_fraction)
    try:
        actual = detect_format(loaded.table) if fmt == "auto" else fmt
        parsed = PARSERS[actual](loaded.table)
    except RecordError as bad:
        raise IngestionError(path, int(numbers[kept[bad.row]]), bad.reason, loaded.unit) from None
    said = parsed.quarantine
    bad = pd.concat(
        [loaded.left_out, pd.DataFrame({"record": kept[said["row"].to_numpy()], "reason": said["reason"]})],
        ignore_index=True,
    ).sort_values("record", kind="stable", ignore_index=True)
    _refuse_if_broken(path, loaded, bad, actual, max_quarantined_fraction)

    frame = parsed.frame
    lines = numbers[kept[frame["row"].to_numpy()]]
    frame["source"] = str(path)
    frame["source_format"] = actual
    frame["source_line"] = lines
    if actual == "kwise":  # pairs of one ranking share an item; a file line names one ranking
        derived = f"{path}:" + pd.Series(lines, dtype="string")
        frame["item_id"] = frame["item_id"].fillna(derived) if "item_id" in frame else derived
    canonical = as_canonical(frame)
    canonical.attrs["ties_dropped"] = parsed.ties_dropped
    quarantine = _quarantine(path, actual, loaded, bad)
    logger.info(
        "Read %d %s rows from %s (%d records%s)", len(canonical), actual, path, len(numbers),
        f", {parsed.ties_dropped} tied pairs dropped" if parsed.ties_dropped else "",
    )
    if len(quarantine):
        first = quarantine.iloc[0]
        logger.warning(
            "Quarantined %d malformed record(s) of %d in %s, first at %s %d: %s", len(quarantine), len(numbers),
            path, loaded.unit, first["source_line"], first["quarantine_reasons"],
        )
    return Ingested(canonical, quarantine)


def read_preference_files(
    paths: Sequence[str | Path], fmt: str = "auto", max_quarantined_fraction: float = MAX_QUARANTINED_FRACTION
) -> Ingested:
    """Several preference files, one canonical table and one quarantine, in the order given."""
    read = [read_source(path, fmt, max_quarantined_fraction) for path in paths]
    if not read:
        return Ingested(empty_canonical(), empty_quarantine())
    table = as_canonical(pd.concat([r.preferences for r in read], ignore_index=True))
    table.attrs["ties_dropped"] = sum(r.preferences.attrs.get("ties_dropped", 0) for r in read)
    quarantine = pd.concat([r.quarantine for r in read], ignore_index=True).astype(QUARANTINE_DTYPES)
    return Ingested(table, quarantine)


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


def ingestion_summary(ingested: Ingested) -> dict[str, Any]:
    """What a person checks after ingestion: rows per format, records set aside, dropped ties, suspect prompts."""
    preferences = ingested.preferences
    return {
        "rows": len(preferences),
        "rows_per_format": {str(k): int(v) for k, v in preferences["source_format"].value_counts().items()},
        "sources": int(preferences["source"].nunique()),
        "quarantined_records": len(ingested.quarantine),
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


class _Loaded(NamedTuple):
    table: pa.Table  # the records that fit one table
    kept: np.ndarray  # for each table row, its index among all records
    numbers: np.ndarray  # the line (or record number) of every record
    unit: str  # "line" or "record"
    left_out: pd.DataFrame  # ``record`` and ``reason`` of the records the slow reader kept out of the table
    records: list | None  # every record as the slow reader parsed it; None when Arrow read the file


def _load(path: Path, kind: str, fmt: str) -> _Loaded:
    """The file's records as Arrow, by ``datasets`` where it can, else by the slow reader."""
    if (kind == "parquet" and path.stat().st_size == 0) or (kind != "parquet" and not _first_byte(path)):
        raise IngestionError(path, 1, "the file is empty (no records)")
    if kind == "json":
        return _reread(path, kind, fmt)
    try:
        table = _read_fast(path, kind)
    except Exception as error:
        if kind == "parquet":
            raise IngestionError(path, None, f"is not a readable parquet file ({_root(error)})") from error
        return _reread(path, kind, fmt, error)
    if table.num_rows == 0:
        raise IngestionError(path, 1, "the file holds no records")
    numbers, unit = _record_numbers(path, kind, table.num_rows)
    left_out = pd.DataFrame({"record": np.zeros(0, np.int64), "reason": pd.Series(dtype="string")})
    return _Loaded(table, np.arange(table.num_rows), numbers, unit, left_out, None)


def _read_fast(path: Path, kind: str) -> pa.Table:
    """The file's records as Arrow, read by ``datasets`` into memory with a throwaway cache."""
    import datasets  # slow to import; only needed when a file is actually read

    builder, options = {
        # mixed types in a column must fail loudly, not be JSON-encoded into strings
        "jsonl": ("json", {"on_mixed_types": None}),
        # text stays text: "NA", "None" or "" are answers, not missing values
        "csv": ("csv", {"na_filter": False}),
        "parquet": ("parquet", {}),
    }[kind]
    with _quiet(datasets), tempfile.TemporaryDirectory(prefix="alignops-ingest-") as cache:
        loaded = datasets.load_dataset(
            builder, data_files=str(path.resolve()), split="train", cache_dir=cache,
            keep_in_memory=True, **options,
        )
        table = loaded.data.table
    table.validate(full=True)  # the JSON reader lets bytes that are not UTF-8 through
    return table.replace_schema_metadata(None)


def _reread(path: Path, kind: str, fmt: str, error: Exception | None = None) -> _Loaded:
    """The slow reader's table; a defect of the file itself is raised with its line."""
    try:
        again = reread(_read_bytes(path), kind, fmt)
    except FileProblem as broken:
        raise IngestionError(path, *broken.problem) from error
    return _Loaded(again.table, again.kept, again.numbers, again.unit, again.left_out, again.records)


def _refuse_if_broken(path: Path, loaded: _Loaded, bad: pd.DataFrame, fmt: str, max_fraction: float) -> None:
    """Raise for the first bad record when all records, or more than ``max_fraction`` of them, are bad."""
    if bad.empty:
        return
    total, count = len(loaded.numbers), len(bad)
    reason = str(bad["reason"].iloc[0])
    read_as = "" if fmt == "auto" else f", read as {fmt}"
    if count == total:
        if total > 1:
            reason += f" (and so are the other {total - 1} records{read_as}: is that the file's format?)"
    elif count / total > max_fraction:
        reason += (
            f" ({count} of {total} records{read_as}, {count / total:.1%}, are malformed: more than "
            f"max_quarantined_fraction {max_fraction:.1%}, so the file is refused, not quarantined)"
        )
    else:
        return
    raise IngestionError(path, int(loaded.numbers[bad["record"].iloc[0]]), reason, loaded.unit)


def _quarantine(path: Path, fmt: str, loaded: _Loaded, bad: pd.DataFrame) -> pd.DataFrame:
    """The bad records as ingestion's quarantine rows."""
    if bad.empty:
        return empty_quarantine()
    records = bad["record"].to_numpy()
    return pd.DataFrame({
        "source": str(path),
        "source_format": fmt,
        "source_line": loaded.numbers[records],
        "quarantine_reasons": bad["reason"].to_numpy(dtype=object),
        "record": _record_texts(path, loaded, records),
    }).astype(QUARANTINE_DTYPES)


def _record_texts(path: Path, loaded: _Loaded, records: np.ndarray) -> list[str]:
    """What a person fixes: the lines of each record (jsonl, csv), else its fields as JSON."""
    if loaded.unit == "line":  # a record runs from its line to the next record's
        lines = _read_bytes(path).split(b"\n")
        ends = np.append(loaded.numbers[1:], len(lines) + 1)
        spans = ((loaded.numbers[i] - 1, ends[i] - 1) for i in records)
        return [b"\n".join(lines[start:stop]).decode("utf-8", "replace").strip() for start, stop in spans]
    if loaded.records is not None:
        fields = [loaded.records[i] for i in records]
    else:  # read by Arrow: each record is its table row
        fields = loaded.table.take(pa.array(records)).to_pylist()
    return [json.dumps(f, ensure_ascii=False, default=str) for f in fields]


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


def _root(error: BaseException) -> str:
    """The innermost cause, which is where readers put the useful text."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return f"{type(error).__name__}: {error}"
