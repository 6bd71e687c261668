"""evaluation: sample SFT, PPO, DPO (and best-of-N) on held-out prompts; gold judge + RM scores."""

from kedro.pipeline import Pipeline, node

from .nodes import evaluate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                evaluate,
                inputs=[
                    "sft_model",
                    "ppo_model",
                    "dpo_model",
                    "tokenizer",
                    "reward_model",
                    "eval_prompts",
                    "gold_judge_spec",
                    "preferences_heldout",
                    "params:model",
                    "params:generation",
                    "params:evaluation",
                ],
                outputs=["evaluation_summary", "evaluation_samples", "evaluation_plot"],
                name="evaluate_policies",
            )
        ]
    )
