"""A catalog wrapper that also logs what a dataset saved (a file or a folder) to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset
from mlflow.tracking import MlflowClient

from alignops.tracking.logger import current_run_id


class MlflowArtifactDataset(AbstractDataset[Any, Any]):
    """Saves through ``dataset``, then logs the written file or folder under ``artifact_path``.

    Unlike kedro-mlflow's wrapper of the same name it logs folders too (Great
    Expectations Data Docs are a site, not a file) and finds the run by id, so it works
    in ParallelRunner's workers. Without a run (tracking disabled) it only saves.

    In kedro-viz it previews as the wrapped dataset does: ``preview`` is the wrapped
    dataset's own (kedro-viz reads the preview type from its return annotation), and
    ``metadata`` merges the wrapped dataset's ``kedro-viz`` settings (``preview_args``,
    ``preview: false``) under the wrapper's own (``layer``).

    Example catalog entry::

        sft_curves:
          type: alignops.catalog.mlflow_artifact.MlflowArtifactDataset
          artifact_path: curves
          dataset:
            type: matplotlib.MatplotlibDataset
            filepath: data/08_reporting/curves/sft.png
          metadata:
            kedro-viz:
              layer: reporting
    """

    def __init__(
        self, *, dataset: dict[str, Any] | str, artifact_path: str | None = None, metadata: dict | None = None
    ) -> None:
        config = {"type": dataset} if isinstance(dataset, str) else dict(dataset)
        self._dataset = AbstractDataset.from_config("wrapped", config)
        self._artifact_path = artifact_path
        self.metadata = _merge_metadata(getattr(self._dataset, "metadata", None), metadata)
        if hasattr(self._dataset, "preview"):
            # an attribute, not a method: kedro-viz asks hasattr(dataset, "preview") to decide
            # whether there is a preview at all (Data Docs have none)
            self.preview = self._dataset.preview

    def load(self) -> Any:
        return self._dataset.load()

    def save(self, data: Any) -> None:
        self._dataset.save(data)
        run_id = current_run_id()
        if run_id is None:
            return
        path = self.local_path
        client = MlflowClient()
        if path.is_dir():
            client.log_artifacts(run_id, str(path), self._artifact_path)
        else:
            client.log_artifact(run_id, str(path), self._artifact_path)

    @property
    def local_path(self) -> Path:
        """Where the wrapped dataset writes: its ``_filepath`` (file) or ``_path`` (folder)."""
        for attribute in ("_filepath", "_path"):
            value = getattr(self._dataset, attribute, None)
            if value is not None:
                return Path(str(value))
        raise TypeError(f"{type(self._dataset).__name__} names no local file or folder to log")

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe(), "artifact_path": self._artifact_path}


def _merge_metadata(wrapped: dict | None, own: dict | None) -> dict | None:
    """The wrapped dataset's metadata under the wrapper's, one level into ``kedro-viz``."""
    if not wrapped:
        return own
    merged = {**wrapped, **(own or {})}
    viz = {**wrapped.get("kedro-viz", {}), **(own or {}).get("kedro-viz", {})}
    if viz:
        merged["kedro-viz"] = viz
    return merged
