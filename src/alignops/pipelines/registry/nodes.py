"""Registry nodes: the run's evaluation into MLflow, then its models into the registry and the gate."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.reward import RewardModel
from alignops.tracking.logger import require_run
from alignops.tracking.models import log_policy, log_reward_model
from alignops.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    RegistryConfig,
    apply_gate,
    choose_policy,
    data_hash,
    policy_figures,
    tag_version,
)

logger = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["source", "policy", "step", "prompt", "response", "reward_model_score", "gold_score"]


def samples_table(
    evaluation_samples: pd.DataFrame, ppo_samples: pd.DataFrame, final_steps: dict[str, int]
) -> pd.DataFrame:
    """PPO's rollouts during training (reward-model score only) and every evaluated
    response (gold and reward-model scores), each with the training step it came from."""
    rollouts = ppo_samples.rename(columns={"score": "reward_model_score"}).assign(
        source="ppo_rollout", policy="ppo", gold_score=float("nan")
    )
    evaluated = evaluation_samples.rename(columns={"rm": "reward_model_score", "gold": "gold_score"}).assign(
        source="evaluation", step=evaluation_samples["policy"].map(lambda p: final_steps.get(p, final_steps["sft"]))
    )
    return pd.concat([rollouts[SAMPLE_COLUMNS], evaluated[SAMPLE_COLUMNS]], ignore_index=True)


def evaluation_metrics(summary: dict) -> dict[str, float]:
    """Every number of the evaluation summary as ``evaluation/<policy or reward_model>/<figure>``."""
    metrics = {}
    for policy, figures in summary["policies"].items():
        metrics.update({f"evaluation/{policy}/{k}": float(v) for k, v in figures.items() if _is_number(v)})
    metrics.update(
        {f"evaluation/reward_model/{k}": float(v) for k, v in summary["reward_model"].items() if _is_number(v)}
    )
    return metrics


def log_evaluation(
    evaluation_summary: dict,
    evaluation_samples: pd.DataFrame,
    ppo_samples: pd.DataFrame,
    sft_history: list[dict],
    ppo_history: list[dict],
    dpo_history: list[dict],
) -> pd.DataFrame:
    """Evaluation figures as run metrics and the sample generations as an MLflow table."""
    run_id = require_run()
    final_steps = {name: int(rows[-1]["step"]) if rows else 0
                   for name, rows in {"sft": sft_history, "ppo": ppo_history, "dpo": dpo_history}.items()}
    table = samples_table(evaluation_samples, ppo_samples, final_steps)
    client = MlflowClient()
    metrics = [Metric(k, v, 0, 0) for k, v in evaluation_metrics(evaluation_summary).items()]
    client.log_batch(run_id, metrics=metrics)
    client.log_table(run_id, data=table, artifact_file="tables/sample_generations.json")
    return table


def register_models(
    sft_model: PreTrainedModel,
    ppo_model: PreTrainedModel,
    dpo_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    evaluation_summary: dict,
    model_params: dict,
    params: dict,
) -> dict:
    """Log and register the run's reward model and its chosen policy, then run the gate."""
    config = RegistryConfig(**params)
    run_id = require_run()
    client = MlflowClient()
    run_tags = client.get_run(run_id).data.tags
    digest = data_hash(run_tags)
    if digest:
        client.set_tag(run_id, "data.hash", digest)

    rm_info = log_reward_model(reward_model)
    rm_version = str(mlflow.register_model(rm_info.model_uri, config.reward_model).version)
    tag_version(client, config.reward_model, rm_version, {
        "data_hash": digest or "unknown",
        "run_id": run_id,
        **{f"eval.{k}": f"{v:.4f}" for k, v in evaluation_summary["reward_model"].items() if _is_number(v)},
    })
    client.set_registered_model_alias(config.reward_model, CANDIDATE, rm_version)

    method = choose_policy(evaluation_summary, config)
    figures = policy_figures(evaluation_summary, method)
    policy = {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model}[method]
    info = log_policy(policy, tokenizer, ModelConfig(**model_params), config.generation)
    version = str(mlflow.register_model(info.model_uri, config.policy_model).version)
    tag_version(client, config.policy_model, version, {
        "method": method,
        "data_hash": digest or "unknown",
        "run_id": run_id,
        "reward_model_version": rm_version,
        **{f"eval.{k}": f"{v:.4f}" for k, v in figures.items() if v is not None},
    })
    client.update_model_version(
        config.policy_model, version,
        description=f"{method.upper()} policy of run {run_id}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if v is not None),
    )

    decision = apply_gate(client, config.policy_model, version, figures, config)
    if decision.promote:
        # the reward model this champion was judged (and, for PPO, trained) with
        client.set_registered_model_alias(config.reward_model, CHAMPION, rm_version)
    client.set_tag(run_id, "registry.policy_version", version)
    client.set_tag(run_id, "registry.decision", "promoted" if decision.promote else "held")
    logger.info("Registered %s v%s (%s): %s — %s", config.policy_model, version, method,
                "promoted to champion" if decision.promote else "stays candidate", decision.reason)
    return {
        "policy_model": config.policy_model,
        "policy_version": version,
        "method": method,
        "figures": figures,
        "promoted": decision.promote,
        "reason": decision.reason,
        "metric": decision.metric,
        "champion_version": version if decision.promote else decision.champion_version,
        "reward_model": config.reward_model,
        "reward_model_version": rm_version,
        "data_hash": digest,
        "run_id": run_id,
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
