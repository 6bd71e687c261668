"""dpo: optimise a copy of the SFT policy directly on the preference pairs (no reward model)."""

from kedro.pipeline import Pipeline, node

from alignops.evaluation.curves import plot_dpo_curves
from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import train


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train,
                inputs=[
                    "sft_model",
                    "tokenizer",
                    "preferences_train",
                    "preferences_heldout",
                    "dpo_checkpoints",
                    "params:model",
                    "params:dpo",
                ],
                outputs=["dpo_model", "dpo_history"],
                name="train_dpo",
                tags=[COMPUTE_TAG],
            ),
            node(
                plot_dpo_curves,
                inputs="dpo_history",
                outputs="dpo_curves",
                name="plot_dpo_curves",
            ),
        ]
    )
