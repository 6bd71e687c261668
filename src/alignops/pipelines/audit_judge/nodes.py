"""Nodes of audit_judge: the judge of the policies on a user's data (and beside gold on the world)."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation.curves import plot_training_curves
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardModel
from alignops.pipelines.reward.nodes import fit_reward_model
from alignops.tracking.logger import metric_logger
from alignops.training.audit_judge_config import AuditJudgeConfig
from alignops.training.common import MetricHistory
from alignops.training.launch import distributable
from alignops.training.reward_config import RewardConfig

STAGE = ("reward", "audit_judge")
"""The reward loop's metrics are renamed: both models train in one MLflow run."""


@distributable("reward")  # the reward stage's recipe, processes and accelerate config included
def train(
    preferences_audit: pd.DataFrame,
    preferences_heldout: pd.DataFrame,
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    audit_judge_checkpoints: str,
    model: dict,
    generation: dict,
    reward: dict,
    audit_judge: dict,
) -> tuple[RewardModel, list[dict]]:
    """The normalised audit judge and its metric rows (``audit_judge/...``, ``eval/audit_judge/...``).

    Trained with the reward stage's recipe on the audit split only; held-out accuracy
    on ``preferences_heldout``; normalised on SFT samples for the audit prompts.
    """
    judge = AuditJudgeConfig(**audit_judge)
    config = dataclasses.replace(RewardConfig(**reward), base=judge.base, train=judge.train)
    if judge.train and preferences_audit.empty:
        raise ValueError(
            "audit_judge: preferences_audit is empty; give data_split.audit_fraction > 0 "
            "or a pretrained classifier (audit_judge.train: false, audit_judge.base: <path>)"
        )
    prompts = preferences_audit["prompt"] if len(preferences_audit) else preferences_heldout["prompt"]
    with MetricHistory(sink=metric_logger(), stage=STAGE) as history:
        audit = fit_reward_model(
            preferences_audit, preferences_heldout, sft_model, tokenizer, audit_judge_checkpoints,
            ModelConfig(**model), GenerationConfig(**generation), config, history,
            prompts.astype(str).tolist(),
        )
    return audit, history.rows


def plot_curves(audit_judge_history: list[dict]) -> plt.Figure:
    return plot_training_curves(audit_judge_history, "audit_judge")
