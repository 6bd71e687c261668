"""The reward model bundle: last-real-token scoring under any padding, other backbones, save/load."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

from alignops.catalog.reward_model import RewardModelDataset
from alignops.models.reward import (
    REWARD_FILE,
    RewardModel,
    build_reward_backbone,
    reward_head_from_causal_lm,
    sequence_rewards,
)
from tests.helpers import TINY_LLAMA, make_tiny_tokenizer

TEXTS = [
    "please reset my password",
    "where is my order 1234",
    "thank you, your refund is on its way",
    "go away",
    "I have sent a new code to your email, it expires in ten minutes",
    "ok",
]
PROMPTS = ["reset my password", "where is my order 1234", "refund please", "help", "my code expired", "hi"]
MODEL = dataclasses.replace(TINY_LLAMA, max_response_tokens=44)


@pytest.fixture(scope="module")
def tokenizer():
    """Overrides conftest's: this module's texts (``sft_model`` is conftest's tiny Llama on it)."""
    return make_tiny_tokenizer(TEXTS * 3)


@pytest.fixture(scope="module")
def reward_model(sft_model, tokenizer) -> RewardModel:
    torch.manual_seed(1)
    model, rm_tokenizer = build_reward_backbone("sft", sft_model, tokenizer)
    with torch.no_grad():  # a visible head: the fresh one is ~0.02 x hidden, every score near 0
        model.score.weight.normal_(0.0, 1.0)
    return RewardModel(model.eval(), rm_tokenizer, MODEL.prompt_template, MODEL.response_prefix, 16, 44)


def _one_by_one(reward_model: RewardModel) -> torch.Tensor:
    return torch.cat([reward_model.score([p], [r], normalise=False) for p, r in zip(PROMPTS, TEXTS, strict=True)])


def test_head_starts_from_the_sft_body_and_leaves_the_sft_model_alone(sft_model, tokenizer):
    before = {k: v.clone() for k, v in sft_model.state_dict().items()}
    model = reward_head_from_causal_lm(sft_model)
    assert model.config.num_labels == 1
    assert model.score.weight.shape == (1, MODEL.hidden_size)
    for name, tensor in model.base_model.state_dict().items():
        assert torch.equal(tensor, sft_model.base_model.state_dict()[name]), name
    with torch.no_grad():
        model.base_model.embed_tokens.weight.add_(1.0)  # a copy, not shared storage
    for name, tensor in sft_model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_score_reads_the_last_real_token(reward_model):
    """Naive reference: the head applied to the final hidden state of the unpadded sequence."""
    batch = reward_model.tokenize(PROMPTS, TEXTS)
    model = reward_model.model
    expected = []
    with torch.no_grad():
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            real = ids[mask.bool()][None, :]  # (1, L), no padding at all
            assert int(real[0, -1]) == reward_model.tokenizer.eos_token_id  # replies end in EOS
            hidden = model.base_model(input_ids=real).last_hidden_state  # (1, L, H)
            expected.append(model.score(hidden[:, -1])[0, 0])
    scores = reward_model.score(PROMPTS, TEXTS, normalise=False)
    torch.testing.assert_close(scores, torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_score_does_not_depend_on_padding_side_or_batch(reward_model):
    alone = _one_by_one(reward_model)
    for batch_size in (1, 2, 4, 64):
        torch.testing.assert_close(
            reward_model.score(PROMPTS, TEXTS, batch_size=batch_size, normalise=False), alone, rtol=1e-4, atol=1e-5
        )
    right = reward_model.tokenize(PROMPTS, TEXTS)  # (N, T) right-padded
    lengths = right["attention_mask"].sum(1)
    shift = (right["input_ids"].shape[1] - lengths)[:, None]  # move each row's tokens to the right end
    columns = (torch.arange(right["input_ids"].shape[1])[None, :] - shift) % right["input_ids"].shape[1]
    left_ids, left_mask = right["input_ids"].gather(1, columns), right["attention_mask"].gather(1, columns)
    assert (left_mask[:, -1] == 1).all() and (left_mask[:, 0] == 0).any()  # really left-padded
    with torch.no_grad():
        left = sequence_rewards(reward_model.model, left_ids, left_mask)
        garbage = sequence_rewards(reward_model.model, torch.where(left_mask.bool(), left_ids, 7), left_mask)
    torch.testing.assert_close(left, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(garbage, alone, rtol=1e-4, atol=1e-5)  # whatever the padding holds


def test_normalisation_and_input_checks(reward_model):
    raw = reward_model.score(PROMPTS, TEXTS, normalise=False)
    shifted = reward_model.with_normalisation(mean=2.0, std=4.0)
    torch.testing.assert_close(shifted.score(PROMPTS, TEXTS), (raw - 2.0) / 4.0)
    assert reward_model.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="prompts but"):
        reward_model.score(PROMPTS, TEXTS[:2])
    with pytest.raises(ValueError, match="std"):
        reward_model.with_normalisation(mean=0.0, std=0.0)


def _gpt2_backbone_without_pad(tmp_path):
    """Another architecture (absolute positions) with another tokenizer that has no pad token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280, min_frequency=1, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([t.upper() for t in TEXTS] * 3, trainer=trainer)
    other = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>")
    assert other.pad_token is None
    torch.manual_seed(2)
    config = GPT2Config(
        vocab_size=len(other), n_positions=64, n_embd=32, n_layer=2, n_head=4, num_labels=1,
        bos_token_id=other.eos_token_id, eos_token_id=other.eos_token_id, pad_token_id=None,
    )
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    return other


def test_another_backbone_brings_its_own_tokenizer(tmp_path, sft_model, tokenizer):
    other = _gpt2_backbone_without_pad(tmp_path)
    torch.manual_seed(3)
    model, rm_tokenizer = build_reward_backbone(str(tmp_path), sft_model, tokenizer)
    assert isinstance(model, GPT2ForSequenceClassification)
    assert rm_tokenizer.get_vocab() != tokenizer.get_vocab()
    assert rm_tokenizer.pad_token_id is not None and rm_tokenizer.pad_token_id != rm_tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings >= len(rm_tokenizer) == len(other) + 1
    assert model.config.pad_token_id == rm_tokenizer.pad_token_id
    reward_model = RewardModel(model.eval(), rm_tokenizer, MODEL.prompt_template, MODEL.response_prefix, 16, 44)
    ids = reward_model.tokenize(PROMPTS, TEXTS)["input_ids"]
    assert int(ids.max()) < len(rm_tokenizer)  # re-tokenised with the backbone's tokenizer
    scores = reward_model.score(PROMPTS, TEXTS, batch_size=4, normalise=False)
    assert scores.shape == (len(TEXTS),) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, _one_by_one(reward_model), rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_is_exact_and_safetensors_only(tmp_path, reward_model):
    normalised = reward_model.with_normalisation(mean=0.25, std=1.5)
    dataset = RewardModelDataset(filepath=str(tmp_path / "reward_model"))
    assert not dataset.exists()
    dataset.save(normalised)
    assert dataset.exists()
    folder = tmp_path / "reward_model"
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and REWARD_FILE in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert json.loads((folder / REWARD_FILE).read_text())["mean"] == 0.25

    loaded = dataset.load()
    assert loaded.facts() == normalised.facts()
    for normalise in (True, False):
        expected = normalised.score(PROMPTS, TEXTS, normalise=normalise)
        assert torch.equal(loaded.score(PROMPTS, TEXTS, normalise=normalise), expected)
    dataset.save(loaded)  # saving over an existing folder replaces it whole
    assert RewardModelDataset(filepath=str(folder)).load().facts() == normalised.facts()
