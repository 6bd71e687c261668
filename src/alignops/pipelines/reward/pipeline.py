"""reward: a Bradley–Terry reward model on the preference pairs, started from the SFT policy."""

from kedro.pipeline import Pipeline, node

from alignops.evaluation.curves import plot_reward_curves
from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import train


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train,
                inputs=[
                    "preferences_train",
                    "preferences_heldout",
                    "sft_model",
                    "tokenizer",
                    "reward_checkpoints",
                    "params:model",
                    "params:generation",
                    "params:reward",
                ],
                outputs=["reward_model", "reward_history"],
                name="train_reward",
                tags=[COMPUTE_TAG],
            ),
            node(
                plot_reward_curves,
                inputs="reward_history",
                outputs="reward_curves",
                name="plot_reward_curves",
            ),
        ]
    )
