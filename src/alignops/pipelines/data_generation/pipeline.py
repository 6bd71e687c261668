"""data_generation: the embedded world (prompts, ranked candidates, demonstrations, gold judge)."""

from kedro.pipeline import Pipeline, node

from .nodes import generate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                generate,
                inputs="params:world",
                outputs=[
                    "raw_preferences",
                    "sft_demonstrations",
                    "eval_prompts",
                    "gold_judge_spec",
                    "world_summary",
                ],
                name="generate_world",
            ),
        ]
    )
