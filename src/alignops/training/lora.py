"""LoRA adapters (peft) for a training stage: ``lora:`` in its parameters.

With adapters only the low-rank matrices train; the base weights stay frozen, so the
optimiser state and the gradients are a few percent of a full fine-tune's. DPO's
reference is the model with its adapters disabled (no second copy is held). A stage
returns the merged model (``merge_and_unload``), a plain causal LM that the catalog
saves, the next stages load and the registry registers as before; the adapters alone
are saved beside the stage's checkpoints (``<checkpoints>/lora_adapter``), loadable
with ``PeftModel.from_pretrained(base, folder)``. PPO's reference is likewise the policy
with its adapters disabled, and its snapshots are the merged weights, written while the
adapters go on training (``save_merged``). The reward model (and the audit judge, trained
with its recipe) gets adapters on its trunk and trains its new score head whole
(``add_classifier_adapters``); merged, it is the plain sequence classifier again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignops.models.loading import save_model

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


def add_adapters(model: torch.nn.Module, config: LoRAConfig, task_type: str = "CAUSAL_LM",
                 modules_to_save: list[str] | None = None) -> torch.nn.Module:
    """``model`` wrapped with fresh adapters (B = 0: the wrapped model computes what
    ``model`` did); only the adapters (and trainable copies of ``modules_to_save``) require gradients."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model,
        LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                   target_modules=_targets(config), modules_to_save=modules_to_save, task_type=task_type),
    )


def _targets(config: LoRAConfig) -> str | list[str]:
    return config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)


def head_modules(model: torch.nn.Module) -> list[str]:
    """The names of a sequence classifier's head: its top-level modules with weights outside its
    trunk (``base_model_prefix``), e.g. ``["score"]`` for a Llama, ``["classifier"]`` for a BERT."""
    trunk = getattr(model, "base_model_prefix", "")
    heads = [name for name, module in model.named_children()
             if name != trunk and any(True for _ in module.parameters())]
    if not heads:
        raise ValueError(f"no head outside the trunk {trunk!r} in {type(model).__name__}")
    return heads


def add_classifier_adapters(model: torch.nn.Module, config: LoRAConfig) -> torch.nn.Module:
    """A sequence classifier (``model``) wrapped with fresh adapters on its trunk's linear layers and
    a trainable copy of its head (peft's ``modules_to_save``: a new head must learn, and it is saved
    with the adapters); the rest of the trunk is frozen. Computes what ``model`` did until trained."""
    heads = head_modules(model)
    targets = _targets(config)
    if not isinstance(targets, str) and set(targets) & set(heads):
        raise ValueError(f"lora.target_modules {targets} names the head {heads}, which trains whole")
    return add_adapters(model, config, task_type="SEQ_CLS", modules_to_save=heads)


def merged(model: torch.nn.Module, adapter_dir: str | Path | None = None, is_main_process: bool = True):
    """The plain model with the adapters merged in; the adapters alone are saved to
    ``adapter_dir`` first (by the main process) when given. A model without adapters comes back as it is."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if adapter_dir is not None and is_main_process:
        model.save_pretrained(str(adapter_dir))  # adapter_model.safetensors + adapter_config.json
    return model.merge_and_unload()


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``merged(model)`` would have, with ``model`` (a ``PeftModel``) left as it is
    and training on: each adapted layer's weight is its base weight plus its active adapters'
    update, added as peft's merge adds it, and moved to the CPU so that the accelerator holds at
    most one merged layer at a time; every other tensor is the model's own."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = base.state_dict()
    for prefix, layer in base.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        own = [key for key in state if key.startswith(f"{prefix}.")]
        tensors = {key.removeprefix(f"{prefix}."): state.pop(key) for key in own}  # base_layer.*, lora_*
        for name, tensor in tensors.items():
            if name.startswith("base_layer."):
                state[f"{prefix}.{name.removeprefix('base_layer.')}"] = tensor
        weight = tensors["base_layer.weight"].clone()
        if not layer.merged and not layer.disable_adapters:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight += layer.get_delta_weight(adapter)
        state[f"{prefix}.weight"] = weight.cpu()
    return state


def save_merged(model: torch.nn.Module, directory: str | Path) -> None:
    """``save_pretrained`` of the plain model, with a ``PeftModel``'s adapters merged in
    (``merged_state_dict``: the model itself keeps its adapters); any other model as it is."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.get_base_model().save_pretrained(str(directory), state_dict=merged_state_dict(model))
    else:
        save_model(model, directory)
