"""Building, loading and saving models: a scratch Llama or any Hugging Face checkpoint.

Weights are read and written as safetensors only: a pickled ``.bin`` can run code
when loaded, and a model registry should never hand one out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignops.models.config import ModelConfig
from alignops.models.tokenizer import resize_for_tokenizer

MODEL_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "sequence_classification": AutoModelForSequenceClassification,
}


def scratch_llama_config(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The tiny Llama's architecture: ``config``'s sizes, the tokenizer's vocabulary and ids."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def build_causal_lm(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The policy to fine-tune: freshly initialised when scratch (seed first), else ``config.base``."""
    if config.is_scratch:
        model = LlamaForCausalLM(scratch_llama_config(config, tokenizer))
    else:
        model = load_model(config.base, "causal_lm", config.trust_remote_code, config.dtype)
    return resize_for_tokenizer(model, tokenizer)


def load_model(
    path: str | Path,
    model_class: str = "causal_lm",
    trust_remote_code: bool = False,
    dtype: str = "float32",
    **kwargs: Any,
) -> PreTrainedModel:
    """``from_pretrained`` for a local folder or hub id (safetensors only).

    ``kwargs`` go to ``from_pretrained``, e.g. ``num_labels=1`` for a reward model
    built on a causal-LM checkpoint.
    """
    if model_class not in MODEL_CLASSES:
        raise ValueError(f"unknown model_class {model_class!r}; expected one of {sorted(MODEL_CLASSES)}")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    return MODEL_CLASSES[model_class].from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch_dtype, **kwargs
    )


def save_model(model: PreTrainedModel, directory: str | Path) -> None:
    """``save_pretrained`` (transformers 5 writes safetensors, and only safetensors)."""
    model.save_pretrained(str(directory))


def inference_device() -> torch.device:
    """Where a node that only scores or samples (evaluation, the gate) puts its models: the
    first CUDA device when there is one, else the CPU. Training loops take theirs from
    accelerate instead."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def place(objects: Any, device: torch.device) -> None:
    """Move each model, or the ``.model`` of each scorer that holds one (``RewardModel``; every
    member of a ``RewardEnsemble``), to ``device`` in place; anything else (a judge that scores
    text) is left as it is."""
    for item in objects:
        members = getattr(item, "members", None)
        if members is not None:
            place(members, device)
            continue
        module = item if isinstance(item, torch.nn.Module) else getattr(item, "model", None)
        if isinstance(module, torch.nn.Module):
            module.to(device)
