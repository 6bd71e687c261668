"""Customer prompts: an intent, one of its templates, and slot values that make the problem specific."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from alignops.world import lexicon
from alignops.world.intents import SLOT_RE, Intent


def prompt_id(prompt: str) -> str:
    """Content-addressed: the same text gets the same id in every file of the world."""
    return "p-" + hashlib.sha1(prompt.encode()).hexdigest()[:10]


def sample_slot(rng: np.random.Generator, name: str) -> str:
    if name in lexicon.SLOT_VALUES:
        values = lexicon.SLOT_VALUES[name]
        return values[rng.integers(len(values))]
    if name == "order":
        return f"#{rng.integers(10_000, 100_000)}"
    if name == "amount":
        return f"${rng.integers(5, 400)}.{('00', '49', '95', '99')[rng.integers(4)]}"
    if name == "digits":
        return f"{rng.integers(1_000, 10_000)}"
    if name == "date":
        return f"{lexicon.MONTHS[rng.integers(12)]} {rng.integers(1, 29)}"
    raise KeyError(f"no values or generator for slot {name!r}")


def sample_slots(rng: np.random.Generator, template: str) -> dict[str, str]:
    """One value per distinct slot of ``template`` (a slot used twice keeps its value)."""
    names = dict.fromkeys(SLOT_RE.findall(template))  # ordered and unique
    return {name: sample_slot(rng, name) for name in names}


def sample_prompts(
    rng: np.random.Generator, n: int, intents: tuple[Intent, ...], taken: set[str]
) -> pd.DataFrame:
    """``n`` prompts over uniformly drawn intents, none of whose text is in ``taken``.

    ``taken`` is updated in place: drawing the eval split first and then each training
    split against the same set is what keeps eval prompts out of training.
    Columns: prompt_id, intent, prompt, slots (dict, kept for composing replies).
    """
    rows, attempts = [], 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could only draw {len(rows)} of {n} distinct prompts")
        intent = intents[rng.integers(len(intents))]
        template = intent.templates[rng.integers(len(intent.templates))]
        slots = sample_slots(rng, template)
        opener = lexicon.PROMPT_OPENERS[rng.integers(len(lexicon.PROMPT_OPENERS))]
        closer = lexicon.PROMPT_CLOSERS[rng.integers(len(lexicon.PROMPT_CLOSERS))]
        prompt = " ".join(part for part in (opener, template.format(**slots), closer) if part)
        if prompt in taken:
            continue
        taken.add(prompt)
        rows.append(
            {"prompt_id": prompt_id(prompt), "intent": intent.name, "prompt": prompt, "slots": slots}
        )
    return pd.DataFrame(rows, columns=["prompt_id", "intent", "prompt", "slots"])
