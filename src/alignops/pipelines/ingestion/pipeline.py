"""ingestion: ``raw_preferences`` (any supported format) -> ``preferences`` (canonical table)."""

from kedro.pipeline import Pipeline, node

from .nodes import ingest_preferences


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                ingest_preferences,
                inputs="raw_preferences",
                outputs="preferences",
                name="ingest_preferences",
            ),
        ]
    )
