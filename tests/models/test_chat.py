"""One rendering for every stage: conversations stay conversations, a chat template decides the
special tokens, and the plain format puts no stray token between prompt and reply."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from alignops.models import build_causal_lm, build_tokenizer
from alignops.models.chat import ROLE_LABELS, Renderer, parse_transcript, render_transcript
from alignops.models.collate import tokenize_completions
from alignops.models.generation import GenerationConfig, sample_responses
from alignops.models.reward import RewardModel, reward_head_from_causal_lm
from alignops.preferences import formats
from tests.helpers import (
    TINY_LLAMA,
    make_chat_tokenizer,
    make_tiny_policy,
    make_tiny_tokenizer,
    save_tiny_chat_llama,
)

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "where is my order"},
    {"role": "assistant", "content": "it is close"},
    {"role": "user", "content": "please help"},
]
TRANSCRIPT = (
    "\n\nSystem: be brief\n\nHuman: where is my order\n\nAssistant: it is close\n\nHuman: please help\n\nAssistant:"
)
PROMPTS = [TRANSCRIPT, "reset my password", "\n\nHuman: refund\n\nAssistant:"]
REPLIES = ["yes, the refund is done", "please reset the account", ""]
CHAT = dataclasses.replace(TINY_LLAMA, max_position_embeddings=96, max_prompt_tokens=64, max_response_tokens=20)


@pytest.fixture(scope="module")
def chat_tokenizer():
    return make_chat_tokenizer()


def _messages(prompt: str, reply: str | None = None) -> list[dict[str, str]]:
    return parse_transcript(prompt) + ([{"role": "assistant", "content": reply}] if reply is not None else [])


def _template_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    """Hugging Face's own rendering and tokenisation of a conversation."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)["input_ids"]


# --- transcripts <-> messages -------------------------------------------------------------------


def test_a_multi_turn_hh_transcript_parses_into_its_messages_and_back():
    assert parse_transcript(TRANSCRIPT) == CONVERSATION
    assert render_transcript(CONVERSATION) == TRANSCRIPT


def test_a_bare_question_is_one_user_message():
    assert parse_transcript("Where is my order? It was due: Friday.") == [
        {"role": "user", "content": "Where is my order? It was due: Friday."}
    ]


def test_ingested_hh_and_trl_conversational_prompts_parse_into_the_records_messages():
    assert ROLE_LABELS == formats.ROLE_LABELS  # ingestion renders with the labels the renderer parses
    reply = [{"role": "assistant", "content": "it ships today"}]
    table = pa.table({
        "prompt": [CONVERSATION[:1]],
        "chosen": [CONVERSATION[1:] + reply],
        "rejected": [CONVERSATION[1:] + [{"role": "assistant", "content": "no"}]],
    })
    prompt = formats.trl_conversational(table).frame["prompt"].iloc[0]
    assert parse_transcript(prompt) == CONVERSATION
    hh = pa.table({"chosen": [TRANSCRIPT + " it ships today"], "rejected": [TRANSCRIPT + " no"]})
    assert parse_transcript(formats.hh_rlhf(hh).frame["prompt"].iloc[0]) == CONVERSATION


# --- with a chat template -----------------------------------------------------------------------


def test_the_chat_template_survives_save_and_load(chat_tokenizer, tmp_path):
    chat_tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.chat_template == chat_tokenizer.chat_template
    assert _template_ids(loaded, CONVERSATION, True) == _template_ids(chat_tokenizer, CONVERSATION, True)


def test_a_saved_tiny_chat_llama_is_a_base_model_that_brings_its_template(tmp_path):
    config = dataclasses.replace(CHAT, base=str(save_tiny_chat_llama(tmp_path / "base")))
    tokenizer = build_tokenizer(config)
    model = build_causal_lm(config, tokenizer)
    assert Renderer.for_model(config, tokenizer).uses_chat_template
    out = sample_responses(model, tokenizer, PROMPTS[:1], config, GenerationConfig(max_new_tokens=2), seed=0)
    assert out.query_ids[0][out.query_mask[0].bool()].tolist() == _template_ids(tokenizer, CONVERSATION, True)


def test_training_rows_are_the_templated_conversation_and_the_mask_covers_the_reply_and_its_end(chat_tokenizer):
    batch = Renderer.for_model(CHAT, chat_tokenizer).tokenize(PROMPTS, REPLIES, 64, 20)
    for row, (prompt, reply) in enumerate(zip(PROMPTS, REPLIES, strict=True)):
        whole = _template_ids(chat_tokenizer, _messages(prompt, reply), False)
        prompt_ids = _template_ids(chat_tokenizer, _messages(prompt), True)
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == whole  # one BOS, one EOS per turn: the template's
        completion = batch["input_ids"][row][batch["completion_mask"][row].bool()].tolist()
        assert whole[: len(prompt_ids)] == prompt_ids and completion == whole[len(prompt_ids) :]
        assert completion[-1] == chat_tokenizer.eos_token_id and completion.count(chat_tokenizer.eos_token_id) == 1
    assert (batch["input_ids"] == chat_tokenizer.bos_token_id).sum(1).tolist() == [1, 1, 1]


def test_a_cut_reply_keeps_no_end_token(chat_tokenizer):
    long_reply = " ".join(["please help the order"] * 10)
    batch = Renderer.for_model(CHAT, chat_tokenizer).tokenize(["hi"], [long_reply], 64, 6)
    completion = batch["input_ids"][0][batch["completion_mask"][0].bool()].tolist()
    prompt_ids = _template_ids(chat_tokenizer, _messages("hi"), True)
    assert completion == _template_ids(chat_tokenizer, _messages("hi", long_reply), False)[len(prompt_ids) :][:6]
    assert chat_tokenizer.eos_token_id not in completion


def test_sampled_prompts_are_the_templates_generation_prompt(chat_tokenizer):
    policy = make_tiny_policy(chat_tokenizer)
    out = sample_responses(policy, chat_tokenizer, PROMPTS, CHAT, GenerationConfig(max_new_tokens=4), seed=0)
    for row, prompt in enumerate(PROMPTS):
        query = out.query_ids[row][out.query_mask[row].bool()].tolist()
        assert query == _template_ids(chat_tokenizer, _messages(prompt), True)


def test_the_reward_model_reads_the_rendering_the_policy_trains_on(chat_tokenizer):
    model = reward_head_from_causal_lm(make_tiny_policy(chat_tokenizer))
    reward_model = RewardModel(model, chat_tokenizer, CHAT.prompt_template, CHAT.response_prefix, 64, 20)
    assert reward_model.renderer.uses_chat_template
    rows = reward_model.tokenize(PROMPTS, REPLIES)
    policy_rows = Renderer.for_model(CHAT, chat_tokenizer).tokenize(PROMPTS, REPLIES, 64, 20)
    assert torch.equal(rows["input_ids"], policy_rows["input_ids"])
    assert torch.equal(rows["attention_mask"], policy_rows["attention_mask"])


def test_a_template_that_rewrites_the_prompt_when_answered_is_refused():
    tokenizer = make_chat_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant (thinking):{% endif %}"
    )
    with pytest.raises(ValueError, match="cannot be located"):
        Renderer.for_model(CHAT, tokenizer).tokenize(["hi"], ["yes"], 64, 20)


# --- without one: the plain template, and SentencePiece ----------------------------------------


def test_without_a_chat_template_prompts_are_the_plain_template():
    tokenizer = make_tiny_tokenizer()
    renderer = Renderer.for_model(TINY_LLAMA, tokenizer)
    assert not renderer.uses_chat_template and renderer.decoded_prefix == TINY_LLAMA.response_prefix
    assert renderer.prompts(PROMPTS) == TINY_LLAMA.format_prompts(PROMPTS)
    assert renderer.completions(PROMPTS, REPLIES)[1] == [" " + r for r in REPLIES]


WORDS = "Human Assistant yes please where is my order it ships today".split()


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-style SentencePiece tokenizer: Unigram pieces, a "▁" prepended to the text
    and every space turned into "▁", so a text that starts with a space starts with "▁▁"."""
    pieces = sorted(set("".join(WORDS) + ":\n"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -5.0) for c in pieces] + [("▁" + w, -1.0) for w in WORDS]
    unigram = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    unigram.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    unigram.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def test_the_response_prefix_adds_no_stray_token_with_sentencepiece():
    tokenizer = sentencepiece_tokenizer()
    prompt, reply = "\n\nHuman: where is my order\n\nAssistant:", "it ships today"
    alone = tokenizer.convert_ids_to_tokens(tokenizer(" " + reply, add_special_tokens=False)["input_ids"])
    assert alone[0] == "▁"  # the stray token a separately tokenised " " + reply would train on
    batch = Renderer(tokenizer, "{prompt}", " ").tokenize([prompt], [reply], 64, 16)
    ids = batch["input_ids"][0].tolist()
    completion = batch["input_ids"][0][batch["completion_mask"][0].bool()].tolist()
    assert tokenizer.convert_ids_to_tokens(completion) == ["▁it", "▁ships", "▁today", "</s>"]
    assert ids[: len(ids) - len(completion)] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt + " " + reply


def test_a_token_across_the_prompts_end_falls_back_to_the_completion_alone():
    tokenizer = make_tiny_tokenizer()
    # "pass" + "word" reads as one BPE word; the prompt alone ends with "pass"
    batch = tokenize_completions(tokenizer, ["reset my pass"], ["word"], 16, 16)
    completion = batch["input_ids"][0][batch["completion_mask"][0].bool()].tolist()
    assert completion == tokenizer("word", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = batch["input_ids"][0][(batch["attention_mask"][0] - batch["completion_mask"][0]).bool()].tolist()
    assert prompt == tokenizer("reset my pass", add_special_tokens=False)["input_ids"]
