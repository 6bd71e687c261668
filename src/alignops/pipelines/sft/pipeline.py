"""sft: tokenizer, then supervised fine-tuning of the base model on the demonstrations."""

from kedro.pipeline import Pipeline, node

from alignops.evaluation.curves import plot_sft_curves
from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import make_tokenizer, train


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                make_tokenizer,
                inputs=["sft_demonstrations", "validated_preferences", "params:model"],
                outputs="tokenizer",
                name="make_tokenizer",
            ),
            node(
                train,
                inputs=["sft_demonstrations", "tokenizer", "params:model", "params:sft", "sft_checkpoints"],
                outputs=["sft_model", "sft_history"],
                name="train_sft",
                tags=[COMPUTE_TAG],
            ),
            node(
                plot_sft_curves,
                inputs="sft_history",
                outputs="sft_curves",
                name="plot_sft_curves",
            ),
        ]
    )
