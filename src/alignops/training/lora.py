"""LoRA adapters (peft) for a training stage: ``lora:`` in its parameters.

With adapters only the low-rank matrices train; the base weights stay frozen, so the
optimiser state and the gradients are a few percent of a full fine-tune's. DPO's
reference is the model with its adapters disabled (no second copy is held). A stage
returns the merged model (``merge_and_unload``), a plain causal LM that the catalog
saves, the next stages load and the registry registers as before; the adapters alone
are saved beside the stage's checkpoints (``<checkpoints>/lora_adapter``), loadable
with ``PeftModel.from_pretrained(base, folder)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ADAPTER_FOLDER = "lora_adapter"


@dataclass(frozen=True)
class LoRAConfig:
    """peft's ``LoraConfig`` for a causal LM, with the fields a stage sets."""

    r: int = 16
    """Rank of each adapter's update (A: d x r, B: r x d)."""
    alpha: int = 32
    """Scale: the update is B A x alpha / r (peft's ``lora_alpha``)."""
    dropout: float = 0.0
    """Dropout on the adapter's input; 0 keeps DPO's and PPO's log-probs exact."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """Which linear layers get adapters: peft's ``all-linear`` (every one but the output
    head), or module names such as ``[q_proj, v_proj]``."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora: r >= 1, alpha > 0 and dropout in [0, 1) required, got {self}")
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))


def lora_config(value: Mapping[str, Any] | None) -> LoRAConfig | None:
    """A stage's ``lora`` parameter (null: no adapters) as a checked ``LoRAConfig``."""
    return None if value is None else LoRAConfig(**dict(value))


def add_adapters(model: torch.nn.Module, config: LoRAConfig) -> torch.nn.Module:
    """``model`` wrapped with fresh adapters (B = 0: the wrapped model computes what
    ``model`` did); only the adapters require gradients."""
    from peft import LoraConfig, get_peft_model

    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    return get_peft_model(
        model,
        LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
                   task_type="CAUSAL_LM"),
    )


def merged(model: torch.nn.Module, adapter_dir: str | Path | None = None, is_main_process: bool = True):
    """The plain model with the adapters merged in; the adapters alone are saved to
    ``adapter_dir`` first (by the main process) when given. A model without adapters comes back as it is."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if adapter_dir is not None and is_main_process:
        model.save_pretrained(str(adapter_dir))  # adapter_model.safetensors + adapter_config.json
    return model.merge_and_unload()
