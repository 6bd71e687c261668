"""DPO node: build the configs, run the loop, return the policy and its metrics. The catalog does all I/O."""

from __future__ import annotations

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.tracking.logger import metric_logger
from alignops.training.common import MetricHistory
from alignops.training.dpo import PreferencePairs, train_dpo
from alignops.training.dpo_config import DPOConfig
from alignops.training.launch import distributable


def preference_pairs(frame: pd.DataFrame) -> PreferencePairs:
    """The (prompt, chosen, rejected) columns of a canonical preference table."""
    return PreferencePairs(frame["prompt"].tolist(), frame["chosen"].tolist(), frame["rejected"].tolist())


@distributable("params")
def train(
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    preferences_train: pd.DataFrame,
    preferences_heldout: pd.DataFrame,
    checkpoint_dir: str,
    model_params: dict,
    params: dict,
) -> tuple[PreTrainedModel, list[dict]]:
    """The DPO policy (trained from a copy of ``sft_model``) and every logged metric row."""
    with MetricHistory(sink=metric_logger()) as history:
        policy = train_dpo(
            sft_model,
            tokenizer,
            preference_pairs(preferences_train),
            preference_pairs(preferences_heldout),
            ModelConfig(**model_params),
            DPOConfig(**params),
            history,
            checkpoint_dir=checkpoint_dir,
        )
    return policy, history.rows
