"""Registry nodes: the run's evaluation into MLflow, then its models into the registry and the gate.

The gate's evidence is a head-to-head (``alignops.evaluation.comparison``): the candidate,
loaded back from the registry, against the champion loaded the same way (or, before
there is a champion, the run's SFT policy), on the evaluation prompts, by the run's
judge. On the embedded world the judge is gold; on a user's data, the audit reward model.
"""

from __future__ import annotations

import pandas as pd
from mlflow.tracking import MlflowClient
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation import EvaluationConfig
from alignops.evaluation.comparison import Comparison, Contender, compare
from alignops.evaluation.judges import AUDIT, AUDIT_DESCRIPTION, GOLD, GOLD_DESCRIPTION, Judge, reward_model_judge
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardModel
from alignops.tracking.evaluation import final_steps, log_evaluation_to_run, samples_table
from alignops.tracking.logger import require_run
from alignops.tracking.models import load_policy
from alignops.tracking.registration import register_run
from alignops.tracking.registry import Evidence, NoEvidence, RegistryConfig
from alignops.world import GoldJudge


def log_evaluation(
    evaluation_summary: dict,
    evaluation_samples: pd.DataFrame,
    ppo_samples: pd.DataFrame,
    sft_history: list[dict],
    ppo_history: list[dict],
    dpo_history: list[dict],
) -> pd.DataFrame:
    """Evaluation figures as run metrics and the sample generations as an MLflow table."""
    steps = final_steps({"sft": sft_history, "ppo": ppo_history, "dpo": dpo_history})
    table = samples_table(evaluation_samples, ppo_samples, steps)
    log_evaluation_to_run(MlflowClient(), require_run(), evaluation_summary, table)
    return table


def register_models(
    sft_model: PreTrainedModel,
    ppo_model: PreTrainedModel,
    dpo_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    evaluation_summary: dict,
    eval_prompts: pd.DataFrame,
    gold_judge_spec: dict,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    params: dict,
) -> dict:
    """Register the run's models; the gold judge decides the promotion (the embedded world)."""
    judge = Judge(GOLD, GOLD_DESCRIPTION, GoldJudge.from_spec(gold_judge_spec).score)
    policies = {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model}
    return register_judged(
        policies,
        tokenizer,
        reward_model,
        evaluation_summary,
        eval_prompts,
        judge,
        model_params,
        generation,
        evaluation,
        params,
    )


def register_models_with_audit_judge(
    sft_model: PreTrainedModel,
    ppo_model: PreTrainedModel,
    dpo_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    evaluation_summary: dict,
    eval_prompts: pd.DataFrame,
    audit_judge: RewardModel,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    params: dict,
) -> dict:
    """Register the run's models; the audit reward model decides the promotion (a user's data)."""
    judge = reward_model_judge(audit_judge, AUDIT_DESCRIPTION, EvaluationConfig(**evaluation).batch_size, AUDIT)
    policies = {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model}
    return register_judged(
        policies,
        tokenizer,
        reward_model,
        evaluation_summary,
        eval_prompts,
        judge,
        model_params,
        generation,
        evaluation,
        params,
    )


def register_judged(
    policies: dict[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    evaluation_summary: dict,
    eval_prompts: pd.DataFrame,
    judge: Judge,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    params: dict,
) -> dict:
    """Log and register the run's reward model and its chosen policy, then run the gate on
    ``judge``'s head-to-head; the sampling seed, batch size and samples per prompt are
    evaluation's, so the gate sees the policies as the evaluation report did."""
    config = RegistryConfig(**params)
    model_config, settings = ModelConfig(**model_params), GenerationConfig(**generation)
    sampling = EvaluationConfig(**evaluation)
    sft = Contender(policies["sft"], tokenizer, model_config, settings)
    prompts = eval_prompts["prompt"].tolist()

    def baseline(champion_uri: str | None) -> Contender:
        if champion_uri is None:
            return sft
        try:
            return Contender(*load_policy(champion_uri))
        except ValueError as error:  # logged by an older alignops, in a format this one does not read
            raise NoEvidence(f"the champion cannot be loaded ({error})") from error

    def head_to_head(candidate_uri: str, champion_uri: str | None) -> Evidence:
        result = compare(
            Contender(*load_policy(candidate_uri)),
            baseline(champion_uri),
            prompts,
            judge,
            config.metric,
            seed=sampling.seed,
            batch_size=sampling.batch_size,
            samples_per_prompt=sampling.samples_per_prompt,
        )
        return evidence(result)

    return register_run(
        MlflowClient(),
        require_run(),
        policies,
        tokenizer,
        reward_model,
        evaluation_summary,
        model_config,
        settings,
        config,
        head_to_head,
    )


def evidence(comparison: Comparison) -> Evidence:
    """The comparison as the gate reads it (tracking does not import evaluation)."""
    return Evidence(
        metric=comparison.metric,
        value=comparison.difference.value,
        ci_low=comparison.difference.low,
        ci_high=comparison.difference.high,
        n_prompts=comparison.n_prompts,
        judge=comparison.judge,
        judge_description=comparison.judge_description,
        candidate_mean=comparison.candidate_mean,
        baseline_mean=comparison.baseline_mean,
        level=comparison.difference.level,
    )
