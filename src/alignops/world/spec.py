"""The world spec: everything the gold judge knows, as JSON-serialisable data.

Action, detail and compliance *keys* are derived here rather than written by hand:
a key is a word bigram of the intent's fixed text (slots removed) that no other
intent, no shared reply piece and no prompt template contains. Scoring a reply by
the share of its intent's keys it contains then rewards doing the right thing,
gives partial credit to partial answers, and gives nothing for echoing the question.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from alignops.world import lexicon
from alignops.world.gold import GoldWeights, tokens, word_bigrams
from alignops.world.intents import BRACKET_RE, CATALOGUE, SLOT_RE, Intent

SPEC_VERSION = 1
# Bigrams made only of these carry no meaning of their own ("to the", "on your").
STOPWORDS = frozenset(
    "a an and any are as at be before by can for from if in is it its my of on once or our "
    "so that the their them then this to until us we with within you your i".split()
)


def bigrams(text: str) -> set[str]:
    """Word bigrams of ``text``, never spanning a slot or a ``[specific|generic]`` phrase."""
    segments = SLOT_RE.split(BRACKET_RE.sub("|", text))[::2]  # even parts are outside slots
    found: set[str] = set()
    for segment in (part for seg in segments for part in seg.split("|")):
        words = tokens(segment)
        found |= word_bigrams(words)
    return found


def _is_content(bigram: str) -> bool:
    return not set(bigram.split()) <= STOPWORDS


def derive_keys(intents: tuple[Intent, ...] = CATALOGUE) -> list[dict[str, list[str]]]:
    """Per intent, the action/detail/comply bigrams that identify it and nothing else."""
    texts = [(i.action, i.detail, i.comply) for i in intents]
    owners = Counter(b for parts in texts for b in set().union(*map(bigrams, parts)))
    shared = set().union(
        *(
            bigrams(piece)
            for group in (
                lexicon.POLITE_GREETINGS, lexicon.POLITE_CLOSINGS, lexicon.NEUTRAL_GREETINGS,
                lexicon.NEUTRAL_CLOSINGS, lexicon.RUDE_OPENERS, lexicon.RUDE_CLOSINGS,
                lexicon.FILLERS, lexicon.GENERIC_BODIES, lexicon.BLANKET_REFUSALS,
                lexicon.UNSAFE_BODIES, lexicon.NEAR_EMPTY, lexicon.LOOP_PHRASES,
            )
            for piece in group
        ),
        *(bigrams(t) for intent in intents for t in intent.templates),
    )

    def keys(text: str, exclude: set[str] = frozenset()) -> list[str]:
        return sorted(
            b for b in bigrams(text) - exclude
            if owners[b] == 1 and b not in shared and _is_content(b)
        )

    out = []
    for intent in intents:
        action = keys(intent.action)
        detail = keys(intent.detail, exclude=set(action))
        comply = keys(intent.comply, exclude=set(action) | set(detail)) if intent.comply else []
        out.append({"action_keys": action, "detail_keys": detail, "comply_keys": comply})
    return out


def world_spec(weights: GoldWeights | None = None, intents: tuple[Intent, ...] = CATALOGUE) -> dict:
    """The JSON-serialisable spec ``GoldJudge.from_spec`` reads (``gold_judge_spec`` in the catalog)."""
    weights = weights or GoldWeights()
    return {
        "version": SPEC_VERSION,
        "intents": [
            {
                "name": intent.name,
                "refuse": intent.refuse,
                "key_slot": intent.key_slot,
                "templates": list(intent.templates),
                **keys,
            }
            for intent, keys in zip(intents, derive_keys(intents), strict=True)
        ],
        "slots": {
            "values": {name: list(values) for name, values in lexicon.SLOT_VALUES.items()},
            "patterns": dict(lexicon.SLOT_PATTERNS),
        },
        "markers": {
            "polite": list(lexicon.POLITE_MARKERS),
            "rude": list(lexicon.RUDE_MARKERS),
            "unsafe": list(lexicon.UNSAFE_MARKERS),
            "refusal_patterns": list(lexicon.REFUSAL_PATTERNS),
        },
        "weights": asdict(weights),
    }

