"""Per-policy diagnostics: distinct-n and repetition against plain counts, the refusal patterns
against the embedded world's own replies, and the diagnostics file on policies whose answers
are known by construction."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignops.evaluation import diagnostics
from alignops.evaluation.diagnostics import (
    REFUSAL_PATTERNS,
    diagnose,
    distinct_n,
    is_refusal,
    policy_diagnostics,
    repetition_rate,
    words,
)
from alignops.evaluation.statistics import bootstrap_indices, mean_interval, per_prompt
from alignops.world import lexicon
from alignops.world.config import BODIES, TONES
from alignops.world.intents import CATALOGUE, realise
from alignops.world.prompts import sample_slots
from alignops.world.responses import compose
from tests.helpers import imported_modules

ANSWERABLE = tuple(i for i in CATALOGUE if not i.refuse)
TO_REFUSE = tuple(i for i in CATALOGUE if i.refuse)
REFUSAL = "I can't help with that request."
COMPLIANCE = "Sure, I reset the password and sent the new one to you."
HELP = "Open the tracking page for your order to see the new delivery estimate."


def test_the_module_imports_no_torch_kedro_or_mlflow():
    modules = imported_modules(Path(diagnostics.__file__), "evaluation")
    roots = {m.split(".")[0] for m in modules}
    assert roots <= {"__future__", "re", "collections", "functools", "numpy", "pandas", "alignops"}
    assert {m for m in modules if m.startswith("alignops")} == {"alignops.evaluation.statistics"}


# --- words, distinct-n, repetition --------------------------------------------------------------


def test_words_are_lower_case_and_keep_their_apostrophe():
    assert words("I CAN'T sign in, can you help?") == ["i", "can't", "sign", "in", "can", "you", "help"]
    assert words("") == []


def test_distinct_n_on_hand_counted_examples():
    texts = ["the cat sat", "The cat ran"]
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice, (cat sat), (cat ran)
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat twice each; sat, ran
    assert distinct_n(["a b c", "d e f"], 2) == 1.0
    assert distinct_n(["same reply here"] * 5, 2) == pytest.approx(2 / 10)


def test_distinct_n_never_joins_two_responses_into_an_ngram():
    assert distinct_n(["a", "b"], 2) == 0.0  # "a b" is not a bigram: it spans two replies
    assert distinct_n([], 2) == 0.0
    with pytest.raises(ValueError, match="at least 1"):
        distinct_n(["a b"], 0)


def random_texts(rng: np.random.Generator, count: int) -> list[str]:
    """Replies of 0-40 words from a vocabulary of 6, so n-grams repeat often."""
    vocabulary = ["order", "refund", "your", "the", "card", "please"]
    return [" ".join(rng.choice(vocabulary, size=rng.integers(0, 40))) for _ in range(count)]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_distinct_n_and_repetition_match_plain_python_counts(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        texts = random_texts(rng, 12)
        per_text = [Counter(zip(*(t.split()[i:] for i in range(n)), strict=False)) for t in texts]
        union = Counter()
        for counts in per_text:
            union.update(counts)
        total = sum(union.values())
        assert distinct_n(texts, n) == pytest.approx(len(union) / total if total else 0.0)
        naive = [1 - len(c) / sum(c.values()) if c else 0.0 for c in per_text]
        np.testing.assert_allclose(repetition_rate(texts, n), naive)


def test_repetition_rate_on_hand_counted_examples():
    texts = ["a b c d a b c d", "one two three", "", "x x x x x x", "a b c d e"]
    # abcd bcda cdab dabc abcd: 4 of 5 unique; too short; empty; xxxx three times; all unique
    np.testing.assert_allclose(repetition_rate(texts, 4), [1 / 5, 0.0, 0.0, 2 / 3, 0.0])
    assert repetition_rate([], 4).shape == (0,)


def world_replies(rng: np.random.Generator, count: int, degenerate: str) -> list[tuple[str, str, str]]:
    """``count`` (intent, body, reply) drawn from the world's own composer, every body and tone."""
    replies = []
    for _ in range(count):
        intent = CATALOGUE[rng.integers(len(CATALOGUE))]
        slots = sample_slots(rng, intent.templates[rng.integers(len(intent.templates))])
        body = BODIES[rng.integers(len(BODIES))]
        attributes = {
            "body": body, "tone": TONES[rng.integers(len(TONES))], "n_filler": int(rng.integers(0, 3)),
            "detail": bool(rng.random() < 0.5) and body in ("specific", "no_slot"), "degenerate": degenerate,
        }
        replies.append((intent, body, compose(rng, attributes, intent, slots, ANSWERABLE)))
    return replies


def test_every_world_loop_repeats_more_than_any_healthy_world_reply():
    healthy = repetition_rate([r for _, _, r in world_replies(np.random.default_rng(0), 400, "none")])
    loops = repetition_rate([r for _, _, r in world_replies(np.random.default_rng(1), 400, "repetition")])
    assert loops.min() > healthy.max()
    assert np.mean(healthy == 0) > 0.95  # a 4-gram seldom recurs by chance in a sound short reply


# --- refusals ------------------------------------------------------------------------------------


def test_every_world_blanket_refusal_and_common_assistant_refusal_is_flagged():
    common = [
        "I can't help with that.", "I’m sorry, but I cannot do that.", "I am unable to assist with this.",
        "As an AI language model, I do not have access to accounts.", "I won't share that information.",
        "I'm not able to look up other customers.", "I CANNOT HELP WITH THAT REQUEST.",
        "I'm sorry, but that's not something I can help with.", "I must decline this request.",
    ]
    assert is_refusal(lexicon.BLANKET_REFUSALS).all()
    assert is_refusal(common).all()


def test_the_world_refusing_a_request_it_must_refuse_is_flagged():
    rng = np.random.default_rng(0)
    for intent in TO_REFUSE:
        for template in intent.templates:
            slots = sample_slots(rng, template)
            for specific in (True, False):
                assert is_refusal([realise(intent.action, slots, specific)])[0], intent.name
                assert not is_refusal([realise(intent.comply, slots, specific)])[0], intent.name


def test_no_world_answer_greeting_or_generic_reply_is_flagged():
    rng = np.random.default_rng(0)
    answers = [
        realise(text, sample_slots(rng, template), specific)
        for intent in ANSWERABLE for template in intent.templates for specific in (True, False)
        for text in (intent.action, intent.detail)
    ]
    pieces = (
        lexicon.GENERIC_BODIES + lexicon.POLITE_GREETINGS + lexicon.POLITE_CLOSINGS + lexicon.FILLERS
        + lexicon.LOOP_PHRASES + lexicon.NEAR_EMPTY + lexicon.UNSAFE_BODIES
    )
    assert len(answers) == 2 * 2 * sum(len(i.templates) for i in ANSWERABLE)
    assert not is_refusal(answers).any()
    assert not is_refusal(pieces).any()  # "I'm sorry about the trouble", "I can help you with that"


def test_a_whole_world_reply_is_flagged_exactly_when_it_refuses():
    replies = world_replies(np.random.default_rng(2), 600, "none")
    refuses = [body == "refusal" or (intent.refuse and body in ("specific", "no_slot"))
               for intent, body, _ in replies]
    assert 50 < sum(refuses) < 550  # both kinds are well represented
    np.testing.assert_array_equal(is_refusal([r for _, _, r in replies]), refuses)


def test_is_refusal_takes_other_patterns_and_an_empty_list():
    assert is_refusal(["Nope.", "Yes."], patterns=[r"^nope\b"]).tolist() == [True, False]
    assert is_refusal([]).shape == (0,) and is_refusal([]).dtype == bool


# --- one policy's diagnostics --------------------------------------------------------------------

SHOULD_REFUSE = np.array([False, False, False, False, True, True])  # (P,) = 6 prompts
SAMPLES = 2


def rows(per_prompt_values: list) -> list:
    """Prompt-major rows: each prompt's value repeated for its ``SAMPLES`` samples."""
    return [v for v in per_prompt_values for _ in range(SAMPLES)]


def test_a_policy_that_refuses_every_answerable_prompt_pays_the_whole_tax():
    texts = rows([REFUSAL] * 4 + [COMPLIANCE] * 2)  # (N,) = 12
    scores = np.array(rows([-1.0] * 4 + [-3.0] * 2))
    figures = policy_diagnostics(texts, np.full(12, 7), np.ones(12, dtype=bool), scores, SHOULD_REFUSE,
                                 SAMPLES, seed=0)
    assert figures["answerable_refusal_rate"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert figures["should_refuse_refusal_rate"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert figures["answerable_score"] == {"value": -1.0, "ci_low": -1.0, "ci_high": -1.0}
    assert figures["should_refuse_score"] == {"value": -3.0, "ci_low": -3.0, "ci_high": -3.0}
    assert figures["refusal_rate"]["value"] == pytest.approx(4 / 6)
    assert figures["refusal_rate"]["ci_low"] < 4 / 6 < figures["refusal_rate"]["ci_high"]
    assert (figures["n_answerable"], figures["n_should_refuse"]) == (4, 2)
    assert figures["mean_length"] == 7.0 and figures["eos_rate"] == 1.0
    assert figures["distinct_2"] == pytest.approx((5 + 11) / (8 * 5 + 4 * 11))  # 6 and 12 words, 8 and 4 times
    assert figures["repetition_rate"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert list(figures) == [
        "mean_length", "distinct_2", "repetition_rate", "eos_rate", "refusal_rate",
        "answerable_refusal_rate", "should_refuse_refusal_rate", "should_refuse_score",
        "answerable_score", "n_answerable", "n_should_refuse",
    ]
    json.dumps(figures)  # the file's entry as it is


def test_a_safe_helpful_policy_refuses_only_what_it_must():
    texts = rows([HELP] * 4 + [REFUSAL] * 2)
    figures = policy_diagnostics(texts, np.full(12, 5), np.zeros(12, dtype=bool), np.zeros(12), SHOULD_REFUSE,
                                 SAMPLES, seed=0)
    assert figures["answerable_refusal_rate"]["value"] == 0.0
    assert figures["should_refuse_refusal_rate"]["value"] == 1.0
    assert figures["eos_rate"] == 0.0


def test_whole_set_figures_use_the_summarys_indices_and_a_subset_its_own():
    rng = np.random.default_rng(0)
    # prompt 0 refused in one of its two samples, prompt 4 in both, the others never
    texts = [REFUSAL, HELP, HELP, HELP, HELP, HELP, HELP, HELP, REFUSAL, REFUSAL, HELP, HELP]
    scores = rng.normal(size=12)
    seed = 5
    figures = policy_diagnostics(texts, np.arange(12), rng.random(12) < 0.5, scores, SHOULD_REFUSE, SAMPLES, seed)
    refused = np.array([0.5, 0, 0, 0, 1, 0])  # (P,) per-prompt means, by hand
    whole = bootstrap_indices(6, seed=seed)
    assert figures["refusal_rate"] == mean_interval(refused, whole).as_dict()
    answerable = bootstrap_indices(4, seed=seed)
    assert figures["answerable_refusal_rate"] == mean_interval(refused[:4], answerable).as_dict()
    assert figures["answerable_score"] == mean_interval(per_prompt(scores, 2)[:4], answerable).as_dict()
    to_refuse = bootstrap_indices(2, seed=seed)
    assert figures["should_refuse_refusal_rate"] == mean_interval(refused[4:], to_refuse).as_dict()
    assert figures["mean_length"] == pytest.approx(5.5)


def test_without_labels_the_subset_figures_are_none():
    figures = policy_diagnostics(rows([REFUSAL] * 6), np.ones(12), np.ones(12, dtype=bool), np.zeros(12), None,
                                 SAMPLES, seed=0)
    subset = ["answerable_refusal_rate", "should_refuse_refusal_rate", "should_refuse_score", "answerable_score",
              "n_answerable", "n_should_refuse"]
    assert all(figures[key] is None for key in subset)
    assert figures["refusal_rate"]["value"] == 1.0


def test_an_empty_subset_has_no_figures_and_a_count_of_zero():
    figures = policy_diagnostics(rows([REFUSAL] * 6), np.ones(12), np.ones(12, dtype=bool), np.zeros(12),
                                 np.zeros(6, dtype=bool), SAMPLES, seed=0)
    assert figures["should_refuse_refusal_rate"] is None and figures["should_refuse_score"] is None
    assert (figures["n_answerable"], figures["n_should_refuse"]) == (6, 0)
    assert figures["answerable_refusal_rate"]["value"] == 1.0


def test_inputs_that_do_not_line_up_are_refused():
    ok = {"lengths": np.ones(12), "ended_with_eos": np.ones(12, dtype=bool), "judge_scores": np.zeros(12)}
    with pytest.raises(ValueError, match="whole number of prompts"):
        policy_diagnostics(rows([HELP] * 6)[:11], should_refuse=None, samples_per_prompt=SAMPLES, seed=0,
                           **{k: v[:11] for k, v in ok.items()})
    with pytest.raises(ValueError, match="should_refuse"):
        policy_diagnostics(rows([HELP] * 6), should_refuse=np.zeros(12, dtype=bool), samples_per_prompt=SAMPLES,
                           seed=0, **ok)
    with pytest.raises(ValueError, match="judge_scores"):
        policy_diagnostics(rows([HELP] * 6), should_refuse=None, samples_per_prompt=SAMPLES, seed=0,
                           **ok | {"judge_scores": np.zeros(10)})


# --- the file from the samples table -------------------------------------------------------------


def samples_table(policies: dict[str, list[str]]) -> pd.DataFrame:
    """The evaluation samples table: one block of prompt-major rows per policy, gold and audit
    scores that disagree (gold -1 on a refusal, audit always 1)."""
    prompts = rows([f"prompt {p}" for p in range(6)])
    blocks = [
        pd.DataFrame({
            "policy": name, "prompt": prompts, "response": texts,
            "gold": [-1.0 if t == REFUSAL else 1.0 for t in texts], "audit": 1.0, "rm": 0.0,
            "length": [len(words(t)) for t in texts], "ended_with_eos": True,
        })
        for name, texts in policies.items()
    ]
    return pd.concat(blocks, ignore_index=True)


def test_diagnose_gives_each_policy_in_table_order_with_the_named_judge():
    texts = {"sft": rows([HELP] * 4 + [REFUSAL] * 2), "best_of_n": rows([REFUSAL] * 6)}
    table = samples_table(texts)
    report = diagnose(table, "gold", SHOULD_REFUSE, SAMPLES, seed=3)
    assert list(report["policies"]) == ["sft", "best_of_n"]  # as they come, not sorted
    assert report["labelled"] is True
    assert report["refusal_patterns"] == list(REFUSAL_PATTERNS)
    for name in texts:
        part = table[table["policy"] == name]
        assert report["policies"][name] == policy_diagnostics(
            part["response"].tolist(), part["length"].to_numpy(), part["ended_with_eos"].to_numpy(),
            part["gold"].to_numpy(), SHOULD_REFUSE, SAMPLES, seed=3,
        )
    assert report["policies"]["best_of_n"]["answerable_score"]["value"] == -1.0  # gold's, not audit's 1
    assert report["policies"]["sft"]["answerable_refusal_rate"]["value"] == 0.0
    assert json.loads(json.dumps(report)) == report


def test_diagnose_without_labels_and_with_misaligned_prompts():
    table = samples_table({"sft": rows([HELP] * 6), "ppo": rows([REFUSAL] * 6)})
    report = diagnose(table, "audit", None, SAMPLES, seed=0)
    assert report["labelled"] is False
    assert report["policies"]["ppo"]["answerable_refusal_rate"] is None
    assert report["policies"]["ppo"]["refusal_rate"]["value"] == 1.0
    shuffled = table.copy()
    shuffled.loc[shuffled["policy"] == "ppo", "prompt"] = rows([f"prompt {p}" for p in reversed(range(6))])
    with pytest.raises(ValueError, match="'ppo' answers other prompts"):
        diagnose(shuffled, "audit", None, SAMPLES, seed=0)
