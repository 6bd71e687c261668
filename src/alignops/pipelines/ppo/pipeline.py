"""ppo: optimise the SFT policy against the reward model on the training prompts."""

from kedro.pipeline import Pipeline, node

from alignops.evaluation.curves import plot_ppo_curves
from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import collect_prompts, train


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                collect_prompts,
                inputs=["preferences_train", "sft_demonstrations", "params:ppo"],
                outputs="ppo_prompts",
                name="collect_ppo_prompts",
            ),
            node(
                train,
                inputs=[
                    "sft_model",
                    "tokenizer",
                    "reward_model",
                    "ppo_prompts",
                    "sft_demonstrations",
                    "ppo_checkpoints",
                    "params:model",
                    "params:generation",
                    "params:ppo",
                ],
                outputs=["ppo_model", "ppo_history", "ppo_samples", "ppo_snapshots"],
                name="train_ppo",
                tags=[COMPUTE_TAG],
            ),
            node(
                plot_ppo_curves,
                inputs="ppo_history",
                outputs="ppo_curves",
                name="plot_ppo_curves",
            ),
        ]
    )
