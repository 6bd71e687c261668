"""Nodes of reward: fit the reward model to the preference pairs, then normalise it."""

from __future__ import annotations

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardModel
from alignops.tracking.logger import metric_logger
from alignops.training.common import MetricHistory
from alignops.training.reward import normalise_reward_model, train_reward_model
from alignops.training.reward_config import RewardConfig


def train(
    preferences_train: pd.DataFrame,
    preferences_heldout: pd.DataFrame,
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_checkpoints: str,
    model: dict,
    generation: dict,
    reward: dict,
) -> tuple[RewardModel, list[dict]]:
    """The normalised reward model and every metric row the loop and the normalisation logged.

    Held-out accuracy is against the panel's labels on ``preferences_heldout``;
    normalisation samples the SFT policy on the training prompts.
    """
    model_config, config = ModelConfig(**model), RewardConfig(**reward)
    with MetricHistory(sink=metric_logger()) as history:
        reward_model = train_reward_model(
            sft_model,
            tokenizer,
            preferences_train,
            preferences_heldout,
            model_config,
            config,
            history,
            checkpoint_dir=reward_checkpoints,
        )
        prompts = preferences_train["prompt"].astype(str).tolist()
        last_step = history.rows[-1]["step"] if history.rows else 0
        reward_model = normalise_reward_model(
            reward_model,
            sft_model,
            tokenizer,
            prompts,
            model_config,
            config,
            GenerationConfig(**generation),
            history,
            step=last_step,
        )
    return reward_model, history.rows
