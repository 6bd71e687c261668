"""Collation and packing: the masks say exactly which tokens are the completion, and a packed
example gets the logits it would get alone."""

from __future__ import annotations

import pytest
import torch

from alignops.core.losses import sft_loss
from alignops.models import ModelConfig, build_causal_lm, build_tokenizer
from alignops.models.collate import select_rows, tokenize_completions, tokenize_preference_pairs
from alignops.models.packing import assign_rows, pack_sequences

TEXTS = [
    "Hello. Please reset your password from the login page.",
    "Where is my order #12345? It was due yesterday.",
    "Under Billing, choose Change billing day and set it to May 7.",
] * 5
TINY = ModelConfig(
    vocab_size=300, tokenizer_min_frequency=1, hidden_size=32, num_layers=2, num_heads=2,
    intermediate_size=64, max_position_embeddings=128, max_prompt_tokens=64, max_response_tokens=64,
)
PROMPTS = TINY.format_prompts(["Where is my order?", "Hi", "Please reset my password.", "refund"])
REPLIES = ["It ships today.", "Hello. How can I help?", "Use the login page.", ""]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TINY, TEXTS)


def _encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_rows_are_prompt_then_completion_then_eos_then_padding(tokenizer):
    batch = tokenize_completions(tokenizer, PROMPTS, REPLIES, 64, 64, completion_prefix=" ")
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["completion_mask"].shape
    for row, (prompt, reply) in enumerate(zip(PROMPTS, REPLIES, strict=True)):
        expected = _encode(tokenizer, prompt) + _encode(tokenizer, " " + reply) + [tokenizer.eos_token_id]
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == expected
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        completion = batch["input_ids"][row][batch["completion_mask"][row].bool()].tolist()
        assert completion == _encode(tokenizer, " " + reply) + [tokenizer.eos_token_id]
    assert not (batch["completion_mask"].bool() & ~batch["attention_mask"].bool()).any()


def test_truncation_keeps_the_prompts_end_and_drops_eos_from_a_cut_completion(tokenizer):
    long_prompt = PROMPTS[2] * 3
    long_reply = " ".join(TEXTS[:3])
    batch = tokenize_completions(tokenizer, [long_prompt, PROMPTS[0]], [long_reply, "ok"], 5, 8)
    prompt_part = batch["input_ids"][0][~batch["completion_mask"][0].bool() & batch["attention_mask"][0].bool()]
    assert prompt_part.tolist() == _encode(tokenizer, long_prompt)[-5:]
    completion = batch["input_ids"][0][batch["completion_mask"][0].bool()].tolist()
    assert completion == _encode(tokenizer, long_reply)[:8]  # cut: no EOS
    short = batch["input_ids"][1][batch["completion_mask"][1].bool()].tolist()
    assert short[-1] == tokenizer.eos_token_id  # fits: EOS


def test_pairs_put_chosen_rows_first_with_shared_prompts(tokenizer):
    batch = tokenize_preference_pairs(tokenizer, PROMPTS[:2], REPLIES[:2], ["no.", "go away"], 64, 64)
    assert batch["input_ids"].shape[0] == 4
    chosen, rejected = batch["completion_mask"].chunk(2)
    prompt_chosen = batch["input_ids"][:2][(batch["attention_mask"][:2] - chosen).bool()]
    prompt_rejected = batch["input_ids"][2:][(batch["attention_mask"][2:] - rejected).bool()]
    assert torch.equal(prompt_chosen, prompt_rejected)


def test_select_rows_cuts_columns_that_are_padding_in_every_selected_row(tokenizer):
    batch = tokenize_completions(tokenizer, PROMPTS, REPLIES, 64, 64)
    shortest = int(batch["attention_mask"].sum(1).argmin())
    rows = select_rows(batch, torch.tensor([shortest]))
    assert rows["input_ids"].shape[1] == int(batch["attention_mask"][shortest].sum())


def test_next_fit_rows_never_overflow():
    rows, offsets = assign_rows(torch.tensor([5, 3, 4, 8, 1]).numpy(), 8)
    assert rows.tolist() == [0, 0, 1, 2, 3] and offsets.tolist() == [0, 5, 0, 0, 0]
    with pytest.raises(ValueError, match="more than"):
        assign_rows(torch.tensor([9]).numpy(), 8)


def test_packed_examples_get_exactly_the_logits_and_loss_they_get_alone(tokenizer):
    torch.manual_seed(0)
    model = build_causal_lm(TINY, tokenizer).eval()
    batch = tokenize_completions(tokenizer, PROMPTS * 2, REPLIES * 2, 64, 64, " ")
    packed = pack_sequences(batch, max_length=128, pad_token_id=tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < batch["input_ids"].shape[0]  # several examples per row
    with torch.no_grad():
        alone = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    completion_alone = alone[batch["completion_mask"].bool()]
    completion_packed = together[packed["completion_mask"].bool()]
    torch.testing.assert_close(completion_packed, completion_alone, rtol=1e-4, atol=1e-5)
    loss_alone, stats_alone = sft_loss(alone, batch["input_ids"], batch["completion_mask"])
    loss_packed, stats_packed = sft_loss(together, packed["input_ids"], packed["completion_mask"])
    assert int(stats_alone["tokens"]) == int(stats_packed["tokens"])
    torch.testing.assert_close(loss_packed, loss_alone, rtol=1e-5, atol=1e-5)
