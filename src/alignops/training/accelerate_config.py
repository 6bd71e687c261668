"""accelerate config files as a stage's launch reads them: what they ask for (machines,
processes, DDP, FSDP or DeepSpeed) and whether the launcher supports it, checked before
anything starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUPPORTED_DISTRIBUTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED")
"""What the hand-off supports, on one machine: data parallel, FSDP and DeepSpeed ZeRO (the
ranks gather the full weights before handing back; ``accelerator.full_model``). Several machines
do not share the hand-off folder."""

SHARDING_TYPES = ("FSDP", "DEEPSPEED")

HANDOFF_DIR_ENV = "ALIGNOPS_HANDOFF_DIR"
"""A folder every machine of a multi-machine launch sees (a shared filesystem): the hand-off
folders go there, and each other machine's ``alignops.training.worker`` picks them up."""


def read_accelerate_config(config: Path) -> dict[str, Any]:
    """An accelerate config file as a dict (its YAML), or FileNotFoundError naming it."""
    import yaml

    if not config.is_file():
        raise FileNotFoundError(f"accelerate_config {str(config)!r} is not a file (from {Path.cwd()})")
    return yaml.safe_load(config.read_text()) or {}


def machines_of(settings: Mapping[str, Any]) -> int:
    """How many machines an accelerate config file (as read) spans."""
    return int(settings.get("num_machines", 1) or 1)


def check_accelerate_config(config: Path, settings: Mapping[str, Any] | None = None) -> None:
    """ValueError naming the file when it asks for what the launcher does not support yet
    (``settings``: the file as read already, else it is read)."""
    settings = read_accelerate_config(config) if settings is None else settings
    kind = str(settings.get("distributed_type", "NO"))
    if kind not in SUPPORTED_DISTRIBUTED_TYPES:
        raise ValueError(f"{config}: distributed_type {kind} is not supported yet; "
                         f"a stage launches {' / '.join(SUPPORTED_DISTRIBUTED_TYPES)}")
    machines = machines_of(settings)
    if machines > 1 and not os.environ.get(HANDOFF_DIR_ENV):
        raise ValueError(
            f"{config}: {machines} machines need a hand-off folder they all see: set {HANDOFF_DIR_ENV} to a "
            f"shared folder here and on the others, and run `python -m alignops.training.worker --machine-rank N` "
            f"from the project folder on machine N"
        )


SHARDED_STAGES = ("sft", "dpo")
"""The stages FSDP and DeepSpeed run: one trained causal LM each. The reward model's and
PPO's own wrappers (score head, value head, frozen reward model) are not sharded yet."""


def check_sharded_stage(stage: str, params: Mapping[str, Any], settings: Mapping[str, Any], config: str) -> None:
    """ValueError, before anything starts, for an FSDP or DeepSpeed config the stage cannot use yet."""
    kind = str(settings.get("distributed_type"))
    if kind not in SHARDING_TYPES:
        return
    if stage not in SHARDED_STAGES:
        raise ValueError(f"{stage}: {config} asks for {kind}, which runs {' and '.join(SHARDED_STAGES)} only so far; "
                         f"use a data-parallel config (conf/accelerate/multi_gpu.yaml) or num_processes")
    if params.get("lora"):
        raise ValueError(f"{stage}: lora with {kind} ({config}) is not supported yet; use a data-parallel config")


def launch_processes(num_processes: int, settings: Mapping[str, Any]) -> int:
    """How many ranks a launch starts: the stage's ``num_processes`` when above 1, else the
    config file's own count (``settings``: the file, {} without one)."""
    if num_processes > 1 or not settings:
        return num_processes
    return int(settings.get("num_processes", 1) or 1)
