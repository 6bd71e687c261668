"""A real MLflow sqlite store per test, in a temp folder (a copy of an empty, migrated one)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import copy_empty_mlflow_store


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{copy_empty_mlflow_store(tmp_path / 'mlflow.db')}"
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # mlflow.set_*_uri also export these variables: set them through monkeypatch so they
    # are restored, or every later `kedro run` subprocess of this worker would inherit them.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # artifacts beside the store: without a location MLflow puts them in ./mlruns, the working tree
    MlflowClient(uri).create_experiment("alignops-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("alignops-test")
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
