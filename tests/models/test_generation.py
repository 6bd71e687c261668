"""Batched generation: left padding changes nothing, masks end at EOS, a seed fixes the samples."""

from __future__ import annotations

import copy

import pytest
import torch

from alignops.models import ModelConfig, build_causal_lm, build_tokenizer, generate
from alignops.models.generation import decode, response_mask_from_ids, sample_tokens

TEXTS = [
    "Hello. Please reset your password from the login page.",
    "Where is my order #12345? It was due yesterday.",
    "Under Billing, choose Change billing day and set it to May 7.",
] * 5
TINY = ModelConfig(
    vocab_size=300, tokenizer_min_frequency=1, hidden_size=32, num_layers=2, num_heads=2,
    intermediate_size=64, max_position_embeddings=96, max_prompt_tokens=32, max_response_tokens=32,
)
# Different lengths, so a batch of them is really padded.
PROMPTS = TINY.format_prompts(["Where is my order?", "Hi", "Please reset my password, it was due yesterday.", "refund"])


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TINY, TEXTS)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    model = build_causal_lm(TINY, tokenizer)
    with torch.no_grad():  # sharper logits than a fresh init: greedy ties would be luck
        model.get_input_embeddings().weight.mul_(20)
    return model.eval()


def test_left_padded_greedy_batch_equals_one_prompt_at_a_time(model, tokenizer):
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=12, do_sample=False, batch_size=len(PROMPTS))
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, tokenizer, [prompt], max_new_tokens=12, do_sample=False, batch_size=1)
        n = int(alone.response_mask.sum())
        assert torch.equal(batched.response_ids[row, :n], alone.response_ids[0, :n])
        assert int(batched.response_mask[row].sum()) == n
        assert batched.texts[row] == alone.texts[0]
    assert (batched.query_ids[:, 0] == tokenizer.pad_token_id).any()  # the batch really was left-padded
    assert torch.equal(batched.query_mask, (batched.query_ids != tokenizer.pad_token_id).long())


def test_output_shapes_and_masks(model, tokenizer):
    out = generate(model, tokenizer, PROMPTS, max_new_tokens=7, do_sample=True, batch_size=3, seed=0)
    assert out.query_ids.shape[0] == out.response_ids.shape[0] == len(out.texts) == len(PROMPTS)
    assert out.response_ids.shape == out.response_mask.shape and out.response_ids.shape[1] <= 7
    assert out.input_ids.shape == out.attention_mask.shape
    # padding after a response holds the pad id, never a stray token
    pad = tokenizer.pad_token_id
    assert torch.equal(out.response_ids == pad, out.response_mask == 0)
    ended = out.response_ids == tokenizer.eos_token_id
    assert torch.equal(out.ended_with_eos, ended.any(1))


def test_a_seed_fixes_the_samples_and_leaves_the_callers_rng_alone(model, tokenizer):
    def sample(seed):
        return generate(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=3.0, seed=seed, batch_size=2)

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = sample(7)
    assert torch.equal(torch.rand(1), expected)  # the caller's random stream is where it was
    second = sample(7)
    assert torch.equal(first.response_ids, second.response_ids) and first.texts == second.texts
    assert not torch.equal(sample(8).response_ids, first.response_ids)


def test_response_mask_covers_tokens_up_to_and_including_the_first_eos():
    eos, pad = 2, 0
    ids = torch.tensor([[5, 6, eos, pad, pad], [5, eos, 7, eos, pad], [5, 6, 7, 8, 9]])
    assert response_mask_from_ids(ids, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_long_prompts_keep_their_last_tokens(model, tokenizer):
    out = generate(model, tokenizer, PROMPTS, max_new_tokens=2, do_sample=False, max_prompt_tokens=4)
    assert out.query_ids.shape[1] == 4
    last = tokenizer(PROMPTS[2], add_special_tokens=False)["input_ids"][-4:]
    assert out.query_ids[2].tolist() == last


# --- our decode loop against Hugging Face's generate, and the sampler against softmax ---------------

def test_greedy_decode_matches_hugging_face_generate(model, tokenizer):
    encoded = tokenizer(PROMPTS, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    reference = model.generate(
        **encoded, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, encoded["input_ids"].shape[1]:]
    ours = decode(
        model, encoded["input_ids"], encoded["attention_mask"], 12, tokenizer.eos_token_id, tokenizer.pad_token_id,
        do_sample=False,
    )
    assert ours.shape[1] <= 12
    width = min(ours.shape[1], reference.shape[1])
    assert torch.equal(ours[:, :width], reference[:, :width])


def test_sampler_draws_from_the_softmax_at_the_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).expand(200_000, -1)
    torch.manual_seed(0)
    tokens = sample_tokens(logits, temperature=0.7)
    frequency = torch.bincount(tokens, minlength=5).double() / len(tokens)
    expected = (logits[0].double() / 0.7).softmax(-1)
    assert torch.allclose(frequency, expected, atol=4e-3)  # ~4 standard errors at p = 0.5


def test_top_k_and_top_p_never_pick_a_token_outside_the_kept_set():
    logits = torch.tensor([[3.0, 2.5, 1.0, 0.5, 0.0, -1.0]]).expand(20_000, -1)
    torch.manual_seed(1)
    assert set(sample_tokens(logits, top_k=2).tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.53, 0.32, 0.07, ...: top_p 0.8 keeps the first two
    assert probs[:1].sum() < 0.8 < probs[:2].sum()
    assert set(sample_tokens(logits, top_p=0.8).tolist()) == {0, 1}
    assert torch.equal(sample_tokens(logits[:3], do_sample=False), torch.zeros(3, dtype=torch.long))


# --- what ends a reply --------------------------------------------------------------------------------

def test_a_reply_ends_at_any_stop_token_not_only_eos(model, tokenizer):
    eos, pad = 2, 0
    ids = torch.tensor([[5, 9, 6, pad], [5, 6, eos, 9]])
    assert response_mask_from_ids(ids, [eos, 9]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    encoded = tokenizer(PROMPTS[:1], add_special_tokens=False, return_tensors="pt")
    args = (model, encoded["input_ids"], encoded["attention_mask"], 8)
    free = decode(*args, tokenizer.eos_token_id, tokenizer.pad_token_id, do_sample=False)
    first = int(free[0, 0])
    assert first != tokenizer.eos_token_id and free.shape[1] > 1
    stopped = decode(*args, [tokenizer.eos_token_id, first], tokenizer.pad_token_id, do_sample=False)
    assert stopped.tolist() == [[first]]  # the greedy reply's first token, declared a stop token, ends it


def test_a_chat_templates_own_end_of_turn_token_stops_sampling(model, tokenizer):
    from alignops.models.generation import stop_token_ids

    assert stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id]  # the plain format: EOS alone
    templated = copy.deepcopy(tokenizer)  # with a Gemma-style template: a turn ends with <|end|>, not EOS
    templated.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    templated.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    end = templated.convert_tokens_to_ids("<|end|>")
    assert end != templated.eos_token_id
    assert stop_token_ids(model, templated) == [templated.eos_token_id, end]
    listed = copy.deepcopy(model)  # a checkpoint that names its own end ids (Llama-3's generation_config)
    listed.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    assert stop_token_ids(listed, tokenizer) == [tokenizer.eos_token_id, 7]
