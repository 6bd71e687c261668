"""registry: evaluation figures and sample tables into the run; models into the registry, through the gate."""

from kedro.pipeline import Pipeline, node

from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import log_evaluation, register_models, register_models_with_audit_judge


def create_pipeline(gold_judge: bool = True, **kwargs) -> Pipeline:
    """The gate's judge is the world's gold judge (``gold_judge_spec``) or, on a user's data
    without one, the audit reward model (``audit_judge``)."""
    if gold_judge:
        register, judge = register_models, "gold_judge_spec"
    else:
        register, judge = register_models_with_audit_judge, "audit_judge"
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
                register,
                inputs=[
                    "sft_model",
                    "ppo_model",
                    "dpo_model",
                    "tokenizer",
                    "reward_model",
                    "evaluation_summary",
                    "frontier",
                    "overoptimisation",
                    "ppo_snapshots",
                    "eval_prompts",
                    judge,
                    "params:model",
                    "params:generation",
                    "params:evaluation",
                    "params:registry",
                ],
                outputs="registry_decision",
                name="register_models",
                tags=[COMPUTE_TAG],
            ),
        ]
    )
