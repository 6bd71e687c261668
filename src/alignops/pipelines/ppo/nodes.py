"""PPO nodes: pick the prompts to roll out on, then run the loop. The catalog does all I/O."""

from __future__ import annotations

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.tracking.logger import metric_logger
from alignops.training.common import MetricHistory
from alignops.training.launch import distributable
from alignops.training.ppo import train_ppo
from alignops.training.ppo_config import PPOConfig
from alignops.training.snapshots import snapshot_name

SAMPLE_COLUMNS = ["step", "prompt", "response", "score"]


def collect_prompts(preferences_train: pd.DataFrame, sft_demonstrations: pd.DataFrame, params: dict) -> list[str]:
    """The distinct canonical prompts of the preference training split (and of the demonstrations)."""
    prompts = preferences_train["prompt"]
    if PPOConfig(**params).demonstration_prompts:
        prompts = pd.concat([prompts, sft_demonstrations["prompt"]], ignore_index=True)
    return prompts.drop_duplicates().tolist()


@distributable("params")
def train(
    sft_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model,
    prompts: list[str],
    sft_demonstrations: pd.DataFrame,
    checkpoint_dir: str,
    model_params: dict,
    generation: dict,
    params: dict,
) -> tuple[PreTrainedModel, list[dict], pd.DataFrame, dict[str, str]]:
    """The PPO policy, every iteration's metrics, the sampled generations, and the policy's
    snapshots by name (``step_<n>``: the folder the loop wrote it to, which the catalog copies)."""
    config = PPOConfig(**params)
    demonstrations = None
    if config.ptx_coef > 0:  # the SFT loss's data, as the sft stage reads it
        demonstrations = (sft_demonstrations["prompt"].tolist(), sft_demonstrations["response"].tolist())
    with MetricHistory(sink=metric_logger()) as history:
        result = train_ppo(
            sft_model,
            tokenizer,
            reward_model,
            prompts,
            ModelConfig(**model_params),
            config,
            GenerationConfig(**generation),
            history,
            checkpoint_dir=checkpoint_dir,
            demonstrations=demonstrations,
        )
    snapshots = {snapshot_name(step): str(folder) for step, folder in result.snapshots.items()}
    return result.policy, history.rows, pd.DataFrame(result.samples, columns=SAMPLE_COLUMNS), snapshots

