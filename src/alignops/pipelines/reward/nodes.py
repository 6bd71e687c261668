"""Nodes of reward: fit the reward model to the preference pairs (or take a trained one), then normalise it."""

from __future__ import annotations

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardEnsemble, RewardModel
from alignops.tracking.logger import metric_logger
from alignops.training.common import MetricHistory
from alignops.training.launch import distributable
from alignops.training.reward import normalise_reward_model, pretrained_reward_model, train_reward_models
from alignops.training.reward_config import RewardConfig


def fit_reward_model(
    train_pairs: pd.DataFrame,
    heldout_pairs: pd.DataFrame,
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    checkpoint_dir: str,
    model_config: ModelConfig,
    generation: GenerationConfig,
    config: RewardConfig,
    history: MetricHistory,
    normalisation_prompts: list[str],
) -> RewardModel | RewardEnsemble:
    """Trained on ``train_pairs`` (``config.ensemble_size`` models), or loaded from ``config.base``
    when ``config.train`` is off, then normalised on the SFT policy's samples for
    ``normalisation_prompts``."""
    if config.train:
        reward_model = train_reward_models(
            sft_model, tokenizer, train_pairs, heldout_pairs, model_config, config, history,
            checkpoint_dir=checkpoint_dir,
        )
    else:
        reward_model = pretrained_reward_model(config.base, model_config)
    last_step = history.rows[-1]["step"] if history.rows else 0
    return normalise_reward_model(
        reward_model, sft_model, tokenizer, normalisation_prompts, model_config, config, generation,
        history, step=last_step,
    )


@distributable("reward")
def train(
    preferences_train: pd.DataFrame,
    preferences_heldout: pd.DataFrame,
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_checkpoints: str,
    model: dict,
    generation: dict,
    reward: dict,
) -> tuple[RewardModel | RewardEnsemble, list[dict]]:
    """The normalised reward model and every metric row the loop and the normalisation logged.

    Held-out accuracy is against the panel's labels on ``preferences_heldout``;
    normalisation samples the SFT policy on the training prompts.
    """
    with MetricHistory(sink=metric_logger()) as history:
        reward_model = fit_reward_model(
            preferences_train, preferences_heldout, sft_model, tokenizer, reward_checkpoints,
            ModelConfig(**model), GenerationConfig(**generation), RewardConfig(**reward), history,
            preferences_train["prompt"].astype(str).tolist(),
        )
    return reward_model, history.rows
