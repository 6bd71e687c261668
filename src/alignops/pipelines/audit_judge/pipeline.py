"""audit_judge: a reward model on prompts no training stage saw (or a named classifier), for evaluation."""

from kedro.pipeline import Pipeline, node

from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import plot_curves, train


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train,
                inputs=[
                    "preferences_audit",
                    "preferences_heldout",
                    "sft_model",
                    "tokenizer",
                    "audit_judge_checkpoints",
                    "params:model",
                    "params:generation",
                    "params:reward",
                    "params:audit_judge",
                ],
                outputs=["audit_judge", "audit_judge_history"],
                name="train_audit_judge",
                tags=[COMPUTE_TAG],
            ),
            node(
                plot_curves,
                inputs="audit_judge_history",
                outputs="audit_judge_curves",
                name="plot_audit_judge_curves",
            ),
        ]
    )
