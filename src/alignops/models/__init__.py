"""Models and tokenizers: building, loading, saving, and generating from them."""

from alignops.models.chat import Renderer
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig, GenerationOutput, generate, sample_responses
from alignops.models.loading import build_causal_lm, load_model, save_model
from alignops.models.tokenizer import build_tokenizer, ensure_pad_token, load_tokenizer, resize_for_tokenizer

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "ModelConfig",
    "Renderer",
    "build_causal_lm",
    "build_tokenizer",
    "ensure_pad_token",
    "generate",
    "load_model",
    "load_tokenizer",
    "resize_for_tokenizer",
    "sample_responses",
    "save_model",
]
