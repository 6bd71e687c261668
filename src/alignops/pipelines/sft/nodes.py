"""Nodes of sft: the run's tokenizer, then supervised fine-tuning on the demonstrations."""

from __future__ import annotations

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models import ModelConfig, build_tokenizer
from alignops.tracking.logger import metric_logger
from alignops.training.common import MetricHistory
from alignops.training.launch import distributable
from alignops.training.sft import train_sft
from alignops.training.sft_config import SFTConfig


def make_tokenizer(
    sft_demonstrations: pd.DataFrame, validated_preferences: pd.DataFrame, model: dict
) -> PreTrainedTokenizerBase:
    """Trained on every distinct text later stages tokenise (scratch), or the base model's own."""
    config = ModelConfig(**model)
    prompts = pd.concat([sft_demonstrations["prompt"], validated_preferences["prompt"]]).astype(str).unique()
    replies = pd.concat(
        [sft_demonstrations["response"], validated_preferences["chosen"], validated_preferences["rejected"]]
    ).astype(str).unique()
    return build_tokenizer(config, config.format_prompts(list(prompts)) + list(replies))


@distributable("sft")
def train(
    sft_demonstrations: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    model: dict,
    sft: dict,
    sft_checkpoints: str,
) -> tuple[PreTrainedModel, list[dict]]:
    """The fine-tuned policy and every metric row the loop logged."""
    with MetricHistory(sink=metric_logger()) as history:
        trained = train_sft(
            tokenizer,
            sft_demonstrations["prompt"].astype(str).tolist(),
            sft_demonstrations["response"].astype(str).tolist(),
            ModelConfig(**model),
            SFTConfig(**sft),
            history,
            checkpoint_dir=sft_checkpoints,
        )
    return trained, history.rows
