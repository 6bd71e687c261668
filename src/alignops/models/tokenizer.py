"""Tokenizers: a byte-level BPE trained on the run's own text, or a pretrained one.

Either way the result has a pad token distinct from EOS. Were they the same, the
EOS that ends every SFT demonstration would be indistinguishable from padding and
the model could never learn to stop.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from alignops.models.config import ModelConfig

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE: any string encodes (unseen characters fall back to bytes)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",  # training; generation asks for left padding explicitly
    )


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` for a folder or hub id, with a distinct pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give ``tokenizer`` a pad token that is not EOS; True when one had to be added.

    Many causal-LM tokenizers ship without a pad token (or reuse EOS). The model that
    goes with such a tokenizer then needs ``resize_for_tokenizer``.
    """
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; cannot end replies")
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def build_tokenizer(config: ModelConfig, texts: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """The run's tokenizer: trained on ``texts`` when ``config.base`` is scratch, else loaded."""
    if config.is_scratch:
        return train_bpe_tokenizer(
            texts, config.vocab_size, config.tokenizer_min_frequency, config.max_position_embeddings
        )
    return load_tokenizer(config.base, trust_remote_code=config.trust_remote_code)


def resize_for_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Grow the embeddings to the tokenizer's size (an added pad token) and record its ids."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if getattr(model, "generation_config", None) is not None:  # sequence classifiers have none
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
