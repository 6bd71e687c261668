"""dpo: optimise a copy of the SFT policy directly on the preference pairs (no reward model)."""

from kedro.pipeline import Pipeline, node

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
            ),
        ]
    )
