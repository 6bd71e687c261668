"""Kedro datasets for preference data."""

from __future__ import annotations

import glob
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from alignops.preferences.formats import FORMATS
from alignops.preferences.ingestion import (
    MAX_QUARANTINED_FRACTION,
    Ingested,
    IngestionError,
    read_preference_files,
    resolve_sources,
)


class PreferenceSourceDataset(AbstractDataset[list[dict] | pd.DataFrame, Ingested]):
    """Preference files in any supported format; loads as ``Ingested``: the canonical table
    of the good records and the quarantine of the malformed ones.

    Saving writes JSON lines (gzipped when the path ends in ``.gz``), which is how
    the embedded world hands its rankings to ingestion. Example::

        raw_preferences:
          type: alignops.catalog.preferences.PreferenceSourceDataset
          filepath: data/01_raw/user/*.jsonl.gz   # a path, a glob, or a list of them
          format: auto                            # or trl_explicit, trl_conversational, hh_rlhf, kwise
          read_only: true                         # it is the user's data: never overwrite it
          max_quarantined_fraction: 0.05          # a file with more malformed records is refused
    """

    def __init__(
        self,
        *,
        filepath: str | list[str],
        format: str = "auto",  # noqa: A002 -- the catalog key users write
        read_only: bool = False,
        max_quarantined_fraction: float = MAX_QUARANTINED_FRACTION,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if format != "auto" and format not in FORMATS:
            expected = ", ".join(("auto", *FORMATS))
            raise DatasetError(f"unknown preference format {format!r}; expected one of {expected}")
        if not 0.0 <= max_quarantined_fraction <= 1.0:
            raise DatasetError(f"max_quarantined_fraction must lie in [0, 1], got {max_quarantined_fraction}")
        self._filepath = [str(p) for p in filepath] if isinstance(filepath, (list, tuple)) else str(filepath)
        self._format = format
        self._read_only = read_only
        self._max_quarantined_fraction = max_quarantined_fraction
        self.metadata = metadata

    def load(self) -> Ingested:
        return read_preference_files(resolve_sources(self._filepath), self._format, self._max_quarantined_fraction)

    def save(self, data: list[dict] | pd.DataFrame) -> None:
        if self._read_only:
            raise DatasetError(
                f"refusing to overwrite user data at {self._filepath} (read_only: true); "
                "this environment reads your own preference files, so run `kedro run --pipelines data` "
                "instead of the embedded world's generator"
            )
        if not isinstance(self._filepath, str) or glob.has_magic(self._filepath):
            raise DatasetError(f"can only save to one file, not {self._filepath}")
        write_jsonl(data, Path(self._filepath))

    def source_files(self) -> list[Path]:
        """The files this dataset reads (a glob or a list gives several)."""
        return resolve_sources(self._filepath)

    def _exists(self) -> bool:
        try:
            return all(path.is_file() for path in resolve_sources(self._filepath))
        except IngestionError:  # a pattern that matches nothing yet
            return False

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "format": self._format,
            "read_only": self._read_only,
            "max_quarantined_fraction": self._max_quarantined_fraction,
        }


def write_jsonl(data: list[dict] | pd.DataFrame, path: Path) -> None:
    """Records as JSON lines, atomically; gzip output is byte-stable so DVC sees no false change."""
    if isinstance(data, pd.DataFrame):
        text = data.to_json(orient="records", lines=True, force_ascii=False)
    else:
        text = "\n".join(json.dumps(record, ensure_ascii=False, default=_plain) for record in data)
    payload = (text.rstrip("\n") + "\n" if text else "").encode("utf-8")
    if path.suffix.lower() == ".gz":
        # no file name or timestamp in the header: the same records give the same bytes
        payload = gzip.compress(payload, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        # mkstemp creates 0600; give the data file the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """numpy and pandas values the generator may hand over, as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is pd.NA:
        return None
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
