"""ingestion: ``raw_preferences`` (any supported format) -> ``preferences`` (canonical table) and
``ingestion_quarantine`` (the malformed records, with file, line and reason)."""

from kedro.pipeline import Pipeline, node

from .nodes import ingest_preferences


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                ingest_preferences,
                inputs="raw_preferences",
                outputs=["preferences", "ingestion_quarantine"],
                name="ingest_preferences",
            ),
        ]
    )
