"""Registry nodes: the run's evaluation into MLflow, then its models into the registry and the gate.

The gate's evidence is a head-to-head (``alignops.evaluation.comparison``): the candidate,
loaded back from the registry, against the champion loaded the same way (or, before
there is a champion, the run's SFT policy), on the evaluation prompts, by the run's
judge. On the embedded world the judge is gold; on a user's data, the audit reward model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pandas as pd
from mlflow.tracking import MlflowClient
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation import EvaluationConfig
from alignops.evaluation.comparison import Comparison, Contender, compare
from alignops.evaluation.judges import AUDIT, AUDIT_DESCRIPTION, GOLD, GOLD_DESCRIPTION, Judge, reward_model_judge
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.loading import inference_device, place
from alignops.models.reward import RewardModel
from alignops.tracking.evaluation import ALARM_TAG, final_steps, log_evaluation_to_run, samples_table
from alignops.tracking.logger import require_run
from alignops.tracking.models import load_policy
from alignops.tracking.registration import register_run
from alignops.tracking.registry import Evidence, NoEvidence, RegistryConfig
from alignops.training.snapshots import snapshot_name
from alignops.world import GoldJudge

logger = logging.getLogger(__name__)


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
    frontier: dict,
    overoptimisation: dict,
    ppo_snapshots: dict[str, Callable[[], PreTrainedModel]],
    eval_prompts: pd.DataFrame,
    gold_judge_spec: dict,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    params: dict,
) -> dict:
    """Register the run's models; the gold judge decides the promotion (the embedded world)."""
    judge = Judge(GOLD, GOLD_DESCRIPTION, GoldJudge.from_spec(gold_judge_spec).score)
    policies, summary, tags = offer_peak(
        {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model}, evaluation_summary, frontier, overoptimisation,
        ppo_snapshots,
    )
    return register_judged(
        policies,
        tokenizer,
        reward_model,
        summary,
        eval_prompts,
        judge,
        model_params,
        generation,
        evaluation,
        params,
        tags,
    )


def register_models_with_audit_judge(
    sft_model: PreTrainedModel,
    ppo_model: PreTrainedModel,
    dpo_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    evaluation_summary: dict,
    frontier: dict,
    overoptimisation: dict,
    ppo_snapshots: dict[str, Callable[[], PreTrainedModel]],
    eval_prompts: pd.DataFrame,
    audit_judge: RewardModel,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    params: dict,
) -> dict:
    """Register the run's models; the audit reward model decides the promotion (a user's data)."""
    place([audit_judge], inference_device())  # scores where the gate samples
    judge = reward_model_judge(audit_judge, AUDIT_DESCRIPTION, EvaluationConfig(**evaluation).batch_size, AUDIT)
    policies, summary, tags = offer_peak(
        {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model}, evaluation_summary, frontier, overoptimisation,
        ppo_snapshots,
    )
    return register_judged(
        policies,
        tokenizer,
        reward_model,
        summary,
        eval_prompts,
        judge,
        model_params,
        generation,
        evaluation,
        params,
        tags,
    )


def offer_peak(
    policies: dict[str, PreTrainedModel],
    summary: dict,
    frontier: dict,
    alarm: dict,
    snapshots: dict[str, Callable[[], PreTrainedModel]],
) -> tuple[dict[str, PreTrainedModel], dict, dict[str, str]]:
    """(policies, summary, PPO's version tags) as the registry is offered them: when the
    over-optimisation alarm fired, PPO is its checkpoint where the judge peaked (a snapshot,
    or SFT itself at step 0), with that checkpoint's frontier figures (same prompts, seed and
    judge as the evaluation's) in place of the last one's."""
    step = alarm["offered_step"]
    tags = {ALARM_TAG: "fired" if alarm["fired"] else "quiet", "ppo_step": str(step)}
    if step == alarm["last_step"]:
        return policies, summary, tags
    point = next(p for p in frontier["points"] if p["policy"] == "ppo" and p["step"] == step)
    model = policies["sft"] if step == 0 else snapshots[snapshot_name(step)]()
    judge = summary["judge"]
    figures = {
        f"{judge}_mean": point["judge"],
        f"{judge}_win_rate_vs_sft": point["win_rate_vs_sft"],
        "rm_mean": point["proxy"]["value"],
        "kl_to_sft": point["kl"],
        "kl_to_sft_kind": point["kl_kind"],
        "mean_length": point["mean_length"],
        "step": step,
    }
    logger.warning("registry: PPO is offered its step %d, where the %s judge peaked (%s)", step, judge,
                   alarm["message"])
    return {**policies, "ppo": model}, {**summary, "policies": {**summary["policies"], "ppo": figures}}, tags


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
    ppo_tags: dict[str, str] | None = None,
) -> dict:
    """Log and register the run's reward model and its chosen policy, then run the gate on
    ``judge``'s head-to-head; the sampling seed, batch size and samples per prompt are
    evaluation's, so the gate sees the policies as the evaluation report did."""
    config = RegistryConfig(**params)
    model_config, settings = ModelConfig(**model_params), GenerationConfig(**generation)
    sampling = EvaluationConfig(**evaluation)
    sft = Contender(policies["sft"], tokenizer, model_config, settings)
    prompts = eval_prompts["prompt"].tolist()
    device = inference_device()  # the gate samples where evaluation did: the accelerator when there is one

    def loaded(model_uri: str) -> Contender:
        contender = Contender(*load_policy(model_uri))  # read onto the CPU
        place([contender.model], device)
        return contender

    def baseline(champion_uri: str | None) -> Contender:
        if champion_uri is None:
            place([sft.model], device)
            return sft
        try:
            return loaded(champion_uri)
        except ValueError as error:  # logged by an older alignops, in a format this one does not read
            raise NoEvidence(f"the champion cannot be loaded ({error})") from error

    def head_to_head(candidate_uri: str, champion_uri: str | None) -> Evidence:
        result = compare(
            loaded(candidate_uri),
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
        {"ppo": ppo_tags or {}},
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
