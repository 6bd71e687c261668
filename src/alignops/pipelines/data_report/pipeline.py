"""data_report: row counts (and what each gate quarantined), length distributions and annotator
agreement, as JSON and PNG."""

from kedro.pipeline import Pipeline, node

from .nodes import plot, summarise


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                summarise,
                inputs=["validated_preferences", "validation_report", "ingestion_quarantine", "params:data_report"],
                outputs="data_report",
                name="summarise_preferences",
            ),
            node(
                plot,
                inputs=["validated_preferences", "params:data_report"],
                outputs="data_report_plot",
                name="plot_preferences",
            ),
        ]
    )
