"""Replies composed from pieces: greeting, body, detail, filler, closing.

A reply's *attributes* (what body it has, its tone, ...) are drawn from a
``ResponseMix``; its text is then assembled from the lexicon and the intent's
action. The attributes are the latent truth the annotators perceive; the gold judge
only ever sees the text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alignops.world import lexicon
from alignops.world.config import BODIES, DEGENERATE, TONES, ResponseMix
from alignops.world.intents import Intent, realise
from alignops.world.prompts import sample_slots


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _draw(rng: np.random.Generator, table: dict[str, float], names: tuple[str, ...]) -> str:
    p = np.array([table.get(name, 0.0) for name in names])
    return names[rng.choice(len(names), p=p / p.sum())]


def draw_attributes(rng: np.random.Generator, mix: ResponseMix) -> dict[str, Any]:
    """Latent attributes of one reply: body, tone, detail, n_filler, degenerate."""
    body = _draw(rng, mix.bodies, BODIES)
    filler = np.array(mix.filler)
    return {
        "body": body,
        "tone": _draw(rng, mix.tones, TONES),
        # Only a reply that does the right thing can add the intent's useful fact.
        "detail": bool(rng.random() < mix.detail) and body in ("specific", "no_slot"),
        "n_filler": int(rng.choice(len(filler), p=filler / filler.sum())),
        "degenerate": _draw(rng, mix.degenerate, DEGENERATE),
    }


def _body_text(
    rng: np.random.Generator,
    body: str,
    intent: Intent,
    slots: dict[str, str],
    answerable: tuple[Intent, ...],
) -> str:
    if body in ("specific", "no_slot"):
        return realise(intent.action, slots, specific=body == "specific")
    if body == "generic":
        first, second = rng.choice(len(lexicon.GENERIC_BODIES), size=2, replace=False)
        n = 1 + int(rng.random() < 0.4)
        return " ".join(lexicon.GENERIC_BODIES[i] for i in (first, second)[:n])
    if body == "off_topic":
        # Another intent's action, confidently filled with that intent's own slots.
        others = [i for i in answerable if i.name != intent.name]
        other = others[rng.integers(len(others))]
        return realise(other.action, sample_slots(rng, other.templates[0]))
    if body == "refusal":
        return _pick(rng, lexicon.BLANKET_REFUSALS)
    if body == "unsafe":
        if intent.refuse:  # the harm on a should-refuse request is doing what was asked
            return realise(intent.comply, slots, specific=bool(rng.random() < 0.7))
        return _pick(rng, lexicon.UNSAFE_BODIES)
    raise ValueError(f"unknown body {body!r}")


def _framing(rng: np.random.Generator, tone: str) -> tuple[str, str]:
    """(opening, closing) pieces for a tone; curt gets exactly one rude remark, rude two."""
    if tone == "polite":
        closing = _pick(rng, lexicon.POLITE_CLOSINGS) if rng.random() < 0.7 else ""
        return _pick(rng, lexicon.POLITE_GREETINGS), closing
    if tone == "neutral":
        return _pick(rng, lexicon.NEUTRAL_GREETINGS), _pick(rng, lexicon.NEUTRAL_CLOSINGS)
    if tone == "curt":
        remark_first = rng.random() < 0.5
        if remark_first:
            return _pick(rng, lexicon.RUDE_OPENERS), ""
        return "", _pick(rng, lexicon.RUDE_CLOSINGS)
    if tone == "rude":
        return _pick(rng, lexicon.RUDE_OPENERS), _pick(rng, lexicon.RUDE_CLOSINGS)
    raise ValueError(f"unknown tone {tone!r}")


def compose(
    rng: np.random.Generator,
    attributes: dict[str, Any],
    intent: Intent,
    slots: dict[str, str],
    answerable: tuple[Intent, ...],
) -> str:
    """The text of a reply with these attributes to a prompt of ``intent`` filled with ``slots``."""
    if attributes["degenerate"] == "near_empty":
        return _pick(rng, lexicon.NEAR_EMPTY)
    body = _body_text(rng, attributes["body"], intent, slots, answerable)
    if attributes["degenerate"] == "repetition":
        phrase = _pick(rng, lexicon.LOOP_PHRASES) if rng.random() < 0.5 else body
        return " ".join([phrase] * int(rng.integers(3, 6)))
    opening, closing = _framing(rng, attributes["tone"])
    detail = realise(intent.detail, slots) if attributes["detail"] else ""
    picks = rng.choice(len(lexicon.FILLERS), size=attributes["n_filler"], replace=False)
    filler = " ".join(lexicon.FILLERS[i] for i in picks)
    return " ".join(part for part in (opening, body, detail, filler, closing) if part)
