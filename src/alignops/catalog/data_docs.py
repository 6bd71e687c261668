"""Great Expectations Data Docs as a catalog entry: a static site built from a validation payload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from alignops.preferences.validation_docs import build_data_docs


class DataDocsDataset(AbstractDataset[dict, str]):
    """Great Expectations Data Docs at ``path``; saves a validation payload, loads the index path.

    Example catalog entry::

        validation_data_docs:
          type: alignops.catalog.data_docs.DataDocsDataset
          path: data/08_reporting/data_docs
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        build_data_docs(data, self._path)

    def load(self) -> str:
        index = self._path / "index.html"
        if not index.exists():
            raise DatasetError(f"no Data Docs built at {self._path} yet")
        return str(index)

    def _exists(self) -> bool:
        return (self._path / "index.html").exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
