"""Registry nodes: the run's evaluation into MLflow, then its models into the registry and the gate."""

from __future__ import annotations

import pandas as pd
from mlflow.tracking import MlflowClient
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardModel
from alignops.tracking.evaluation import final_steps, log_evaluation_to_run, samples_table
from alignops.tracking.logger import require_run
from alignops.tracking.registration import register_run
from alignops.tracking.registry import RegistryConfig


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
    model_params: dict,
    generation: dict,
    params: dict,
) -> dict:
    """Log and register the run's reward model and its chosen policy, then run the gate."""
    config = RegistryConfig(**params)
    policies = {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model}
    return register_run(
        MlflowClient(),
        require_run(),
        policies,
        tokenizer,
        reward_model,
        evaluation_summary,
        ModelConfig(**model_params),
        GenerationConfig(**generation),
        config,
    )
