"""The workspace ``bench/trl_baseline.py`` reads: the same model, tokenizer, data and numbers as ours.

``workload.json`` holds every number TRL needs, read from our validated stage
configurations; its hash stamps both sides' results, so speedups are only ever
computed between runs of the same workload.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from alignops.models.loading import save_model
from bench.ours import Inputs, ppo_prompts

# ---------------------------------------------------------------------------------------
# The workspace TRL reads


def stage_workload(config_class: type, params: dict[str, Any], steps: int, **extra: Any) -> dict[str, Any]:
    """The numbers of one stage TRL needs, read from its (validated) configuration."""
    config = config_class(**params)
    names = (
        "batch_size",
        "grad_accum",
        "learning_rate",
        "schedule",
        "warmup_steps",
        "weight_decay",
        "max_grad_norm",
        "beta",
        "loss_type",
    )
    values = {name: getattr(config, name) for name in names if hasattr(config, name)}
    values.setdefault("grad_accum", 1)
    values.setdefault("weight_decay", 0.0)
    values.setdefault("max_grad_norm", 1.0)
    values.setdefault("warmup_steps", 0)
    values.setdefault("schedule", "linear")
    return {**values, "steps": steps, **extra}


def ppo_workload(params: dict[str, Any], generation_params: dict[str, Any], steps: int) -> dict[str, Any]:
    from alignops.models.generation import GenerationConfig
    from alignops.training.ppo_config import PPOConfig

    config = PPOConfig(**params)
    generation = GenerationConfig(**generation_params)
    names = (
        "rollout_batch_size",
        "minibatch_size",
        "ppo_epochs",
        "generation_batch_size",
        "max_new_tokens",
        "learning_rate",
        "schedule",
        "kl_coef",
        "kl_estimator",
        "cliprange",
        "cliprange_value",
        "vf_coef",
        "gamma",
        "lam",
    )
    values = {name: getattr(config, name) for name in names} | {"temperature": generation.temperature}
    # ours replaces the score of a reply without EOS by missing_eos_score; TRL subtracts a penalty
    values["missing_eos_penalty"] = None if config.missing_eos_score is None else abs(config.missing_eos_score)
    return {**values, "steps": steps}


def build_workload(
    inputs: Inputs, steps: dict[str, int], warmup: int, threads: int, policy_source: str, extra: dict | None = None
) -> dict:
    """Every number TRL reads; ``extra`` (the size, the model's shape, fixed row lengths) goes in the hash too."""
    workload: dict[str, Any] = {
        **(extra or {}),
        "seed": 0,
        "threads": threads,
        "warmup_steps": warmup,
        "policy": policy_source,
        "max_prompt_tokens": inputs.model_config.max_prompt_tokens,
        "max_response_tokens": inputs.model_config.max_response_tokens,
        "max_length": inputs.model_config.max_length,
        "n_pairs": len(inputs.preferences),
    }
    from alignops.training.dpo_config import DPOConfig
    from alignops.training.reward_config import RewardConfig

    n_pairs = len(inputs.preferences)
    workload["reward"] = stage_workload(RewardConfig, inputs.params.get("reward", {}), steps["reward"], n_pairs=n_pairs)
    workload["dpo"] = stage_workload(DPOConfig, inputs.params.get("dpo", {}), steps["dpo"], n_pairs=n_pairs)
    workload["ppo"] = ppo_workload(inputs.params.get("ppo", {}), inputs.params.get("generation", {}), steps["ppo"])
    return workload


def write_workspace(workspace: Path, inputs: Inputs, tokenizer, policy, workload: dict) -> str:
    """Tokenizer, policy, data (in the model's prompt format) and workload; returns the workload's hash."""
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    tokenizer.save_pretrained(str(workspace / "tokenizer"))
    save_model(policy, workspace / "policy")
    config = inputs.model_config
    prefs = inputs.preferences
    with (workspace / "pairs.jsonl").open("w") as f:
        prompts = config.format_prompts(prefs["prompt"].tolist())
        for prompt, chosen, rejected in zip(prompts, prefs["chosen"], prefs["rejected"], strict=True):
            prefix = config.response_prefix
            f.write(json.dumps({"prompt": prompt, "chosen": prefix + chosen, "rejected": prefix + rejected}) + "\n")
    with (workspace / "prompts.jsonl").open("w") as f:
        for prompt in config.format_prompts(ppo_prompts(inputs)):
            f.write(json.dumps({"prompt": prompt}) + "\n")
    (workspace / "workload.json").write_text(json.dumps(workload, indent=2, sort_keys=True) + "\n")
    return workload_hash(workspace)


def workload_hash(workspace: Path) -> str:
    """Identifies a workload; ``bench/trl_baseline.py`` stamps its results with the same hash."""
    return hashlib.sha256((workspace / "workload.json").read_bytes()).hexdigest()[:16]
