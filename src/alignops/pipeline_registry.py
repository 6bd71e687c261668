"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Every stage under ``pipelines/`` by its folder name, plus two compositions.

    ``data`` is the journey for a user's own preference files (everything but the
    embedded world's generator); ``__default__`` runs the whole journey on the
    embedded world.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines["data"] = sum(
        (p for name, p in pipelines.items() if name != "data_generation"), Pipeline([])
    )
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
