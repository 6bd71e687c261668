"""report: the reward–KL frontier with its over-optimisation alarm, per-policy diagnostics and
the alignment tax, and one self-contained HTML page (data/08_reporting/report.html)."""

from kedro.pipeline import Pipeline, node

from alignops.pipelines.threads import COMPUTE_TAG

from .nodes import diagnose_policies, frontier_with_audit_judge, frontier_with_gold_judge, write_report


def create_pipeline(gold_judge: bool = True, **kwargs) -> Pipeline:
    """``gold_judge``: the embedded world's judge draws the frontier; without, the audit judge."""
    return Pipeline(
        [
            node(
                frontier_with_gold_judge if gold_judge else frontier_with_audit_judge,
                inputs=[
                    "sft_model",
                    "ppo_snapshots",
                    "tokenizer",
                    "reward_model",
                    "eval_prompts",
                    "evaluation_summary",
                    "evaluation_samples",
                    "gold_judge_spec" if gold_judge else "audit_judge",
                    "params:model",
                    "params:generation",
                    "params:evaluation",
                    "params:ppo",
                    "params:report",
                ],
                outputs=["frontier", "overoptimisation"],
                name="measure_frontier",
                tags=[COMPUTE_TAG],
            ),
            node(
                diagnose_policies,
                inputs=["evaluation_samples", "eval_prompts", "evaluation_summary", "params:evaluation"],
                outputs="policy_diagnostics",
                name="diagnose_policies",
            ),
            node(
                write_report,
                inputs=[
                    "evaluation_summary",
                    "frontier",
                    "overoptimisation",
                    "policy_diagnostics",
                    "evaluation_samples",
                    "params:report",
                ],
                outputs=["evaluation_report", "frontier_plot"],
                name="write_report",
            ),
        ]
    )
