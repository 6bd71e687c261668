"""A Kedro dataset that writes Great Expectations Data Docs, so the catalog owns where they go.

Saving takes the ``data_docs`` payload of :func:`alignops.data.validation.validate_preferences`
(the suite and the validation results as JSON), puts them in the stores of an
in-memory GX context whose only Data Docs site is a ``SiteBuilder`` writing to
``path``, and builds that site: ``path/index.html`` plus the suite page and one page
per validation run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResultSchema,
)
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from kedro.io import AbstractDataset, DatasetError

from alignops.data.validation_suite import ephemeral_context

SITE_NAME = "alignops"
# One batch per run: pages land at validations/<suite>/<run name>/<run time>/<batch>.html
BATCH_NAME = "preferences"

#: What a previous build left behind; only these are removed, never anything else under ``path``.
_SITE_ENTRIES = ("index.html", "expectations", "validations", "static")


def build_data_docs(payload: dict[str, Any], directory: Path) -> Path:
    """Render the suite and validation results of ``payload`` as a Data Docs site."""
    directory = directory.resolve()
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(directory),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    context = ephemeral_context(data_docs_sites={SITE_NAME: site})
    context.suites.add(gx.ExpectationSuite(**payload["suite"]))
    for result_json in payload["validations"]:
        result = ExpectationSuiteValidationResultSchema().load(result_json)
        run = result.meta["run_id"]
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
            run_id=RunIdentifier(run_name=run["run_name"], run_time=run["run_time"]),
            batch_identifier=BATCH_NAME,
        )
        context.validation_results_store.set(key, result)

    # The site builder only adds pages: clear the last run's so the index shows this run only.
    for entry in _SITE_ENTRIES:
        target = directory / entry
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    context.build_data_docs(site_names=[SITE_NAME])
    return directory / "index.html"


class DataDocsDataset(AbstractDataset[dict, str]):
    """Great Expectations Data Docs at ``path``; saves a validation payload, loads the index path.

    Example catalog entry::

        validation_data_docs:
          type: alignops.data.validation_docs.DataDocsDataset
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
