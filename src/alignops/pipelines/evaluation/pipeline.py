"""evaluation: sample SFT, PPO, DPO (and best-of-N) on held-out prompts; the run's judges + RM scores."""

from kedro.pipeline import Pipeline, node

from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import evaluate_with_audit_judge, evaluate_with_gold_judge


def create_pipeline(gold_judge: bool = True) -> Pipeline:
    """``gold_judge``: the embedded world, where the gold judge decides and the audit judge is
    measured beside it; without, a user's data, where the audit judge decides."""
    return Pipeline(
        [
            node(
                evaluate_with_gold_judge if gold_judge else evaluate_with_audit_judge,
                inputs=[
                    "sft_model",
                    "ppo_model",
                    "dpo_model",
                    "tokenizer",
                    "reward_model",
                    "audit_judge",
                    "eval_prompts",
                    "preferences_heldout",
                    *(["gold_judge_spec"] if gold_judge else []),
                    "params:model",
                    "params:generation",
                    "params:evaluation",
                ],
                outputs=["evaluation_summary", "evaluation_samples", "evaluation_plot"],
                name="evaluate_policies",
                tags=[COMPUTE_TAG],
            )
        ]
    )
