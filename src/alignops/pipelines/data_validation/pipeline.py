"""data_validation: `preferences` -> report, Data Docs, quarantine -> `validated_preferences`,
split by prompt into `preferences_train`, `preferences_heldout` and `preferences_audit`."""

from kedro.pipeline import Pipeline, node

from .nodes import gate, split, validate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                validate,
                inputs=["preferences", "params:data_validation", "params:data_validation_suite"],
                outputs=[
                    "validation_report",
                    "validation_data_docs",
                    "passing_preferences",
                    "preferences_quarantine",
                ],
                name="validate_preferences",
            ),
            node(
                gate,
                inputs=["validation_report", "passing_preferences"],
                outputs="validated_preferences",
                name="gate_preferences",
            ),
            node(
                split,
                inputs=["validated_preferences", "params:data_split"],
                outputs=["preferences_train", "preferences_heldout", "preferences_audit"],
                name="split_preferences",
            ),
        ]
    )
