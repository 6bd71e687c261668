"""registry: evaluation figures and sample tables into the run; models into the registry, through the gate."""

from kedro.pipeline import Pipeline, node

from .nodes import log_evaluation, register_models


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                log_evaluation,
                inputs=[
                    "evaluation_summary",
                    "evaluation_samples",
                    "ppo_samples",
                    "sft_history",
                    "ppo_history",
                    "dpo_history",
                ],
                outputs="tracked_samples",
                name="log_evaluation",
            ),
            node(
                register_models,
                inputs=[
                    "sft_model",
                    "ppo_model",
                    "dpo_model",
                    "tokenizer",
                    "reward_model",
                    "evaluation_summary",
                    "params:model",
                    "params:generation",
                    "params:registry",
                ],
                outputs="registry_decision",
                name="register_models",
            ),
        ]
    )
