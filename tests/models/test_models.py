"""Tokenizers and models: scratch builds, save/load through the hub code path, safetensors only."""

from __future__ import annotations

import inspect

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignops.catalog.models import CheckpointDirectory, HFModelDataset, HFTokenizerDataset
from alignops.models import ModelConfig, build_causal_lm, build_tokenizer, load_model
from alignops.models.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer

TEXTS = [
    "Hello. Please reset your password from the login page.",
    "Where is my order #12345? It was due yesterday.",
    "Under Billing, choose Change billing day and set it to May 7.",
    "We are sorry for the trouble. Your refund is on its way.",
] * 5
TINY = ModelConfig(
    vocab_size=300, tokenizer_min_frequency=1, hidden_size=32, num_layers=2, num_heads=2,
    intermediate_size=64, max_position_embeddings=64, max_prompt_tokens=16, max_response_tokens=32,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TINY, TEXTS)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_causal_lm(TINY, tokenizer).eval()


def test_scratch_tokenizer_has_a_pad_token_distinct_from_eos(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) <= TINY.vocab_size


def test_byte_level_tokenizer_encodes_any_text(tokenizer):
    text = "Ünïcødé, emoji 🚀 and 中文 never seen in training\n\ttabs"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_model_and_tokenizer_round_trip_through_from_pretrained(tmp_path, tokenizer, model):
    HFModelDataset(filepath=str(tmp_path / "model")).save(model)
    HFTokenizerDataset(filepath=str(tmp_path / "tokenizer")).save(tokenizer)

    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth"))}

    # the code path a hub id takes: AutoModel/AutoTokenizer.from_pretrained on a name
    loaded = load_model(str(tmp_path / "model")).eval()
    loaded_tokenizer = load_tokenizer(str(tmp_path / "tokenizer"))
    assert loaded_tokenizer(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]
    assert (loaded_tokenizer.pad_token_id, loaded_tokenizer.eos_token_id) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id,
    )
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded.config.pad_token_id == tokenizer.pad_token_id


def test_datasets_report_existence_and_reload(tmp_path, tokenizer, model):
    model_set = HFModelDataset(filepath=str(tmp_path / "m"))
    tokenizer_set = HFTokenizerDataset(filepath=str(tmp_path / "t"))
    assert not model_set.exists() and not tokenizer_set.exists()
    model_set.save(model)
    model_set.save(model)  # replacing a saved model leaves one clean folder
    tokenizer_set.save(tokenizer)
    assert model_set.exists() and tokenizer_set.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert isinstance(tokenizer_set.load(), PreTrainedTokenizerFast)


def test_a_causal_lm_folder_loads_as_a_one_output_classifier(tmp_path, tokenizer, model):
    HFModelDataset(filepath=str(tmp_path / "m")).save(model)
    reward = HFModelDataset(
        filepath=str(tmp_path / "m"), model_class="sequence_classification", load_args={"num_labels": 1}
    ).load()
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    assert reward(**batch).logits.shape == (2, 1)


def test_trust_remote_code_is_off_unless_configured():
    assert ModelConfig().trust_remote_code is False
    for function in (load_model, load_tokenizer, HFModelDataset.__init__, HFTokenizerDataset.__init__):
        assert inspect.signature(function).parameters["trust_remote_code"].default is False


def test_a_pretrained_base_without_pad_token_gets_a_distinct_one_and_resized_embeddings(tmp_path):
    raw = Tokenizer(models.BPE())  # like many causal-LM tokenizers: EOS, no pad
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    no_pad = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS_TOKEN)
    assert no_pad.pad_token is None
    no_pad.save_pretrained(tmp_path / "base")
    base = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(no_pad), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64,
    ))
    base.save_pretrained(tmp_path / "base")

    config = ModelConfig(base=str(tmp_path / "base"))
    tokenizer = build_tokenizer(config)
    model = build_causal_lm(config, tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == len(no_pad) + 1
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_model_config_rejects_inconsistent_values():
    with pytest.raises(TypeError):
        ModelConfig(hidden=128)  # a misspelt key fails loudly
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="prompt"):
        ModelConfig(prompt_template="no placeholder")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ModelConfig(max_prompt_tokens=200, max_response_tokens=200, max_position_embeddings=256)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="float8")


def test_checkpoint_directory_loads_as_an_absolute_path(tmp_path):
    path = CheckpointDirectory(path=str(tmp_path / "ckpt")).load()
    assert path == str((tmp_path / "ckpt").resolve())
