"""Generate the embedded world for a seed: prompts, ranked candidates, demonstrations, eval prompts.

Everything is drawn from independent random streams spawned from one seed
(prompts of each split, candidates, demonstrations, the panel), so the world is a
pure function of ``WorldConfig``. The gold judge is exported as a spec only; the
generator never consults it: labels come from the panel, whose tastes merely
overlap with gold's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from alignops.world.annotators import perceived_features, rank_items
from alignops.world.config import ResponseMix, WorldConfig
from alignops.world.intents import CATALOGUE, Intent
from alignops.world.prompts import sample_prompts
from alignops.world.responses import compose, draw_attributes
from alignops.world.spec import world_spec

MAX_DRAWS_PER_REPLY = 50


@dataclass(frozen=True)
class World:
    rankings: list[dict]
    """One dict per labelling act: item_id, prompt_id, prompt, responses (K), ranks (K), annotator_id."""
    candidates: pd.DataFrame
    """One row per ranked reply: item_id, position, prompt_id, intent, refuse, prompt, response,
    n_words and its latent attributes (for diagnostics; never exported to training)."""
    sft_demonstrations: pd.DataFrame
    """prompt_id, intent, prompt, response, plus latent attributes."""
    eval_prompts: pd.DataFrame
    """prompt_id, intent, prompt: held out from every training split."""
    judge_spec: dict
    """What ``GoldJudge.from_spec`` needs; evaluation's only view of the truth."""


def _replies(
    rng: np.random.Generator,
    prompts: pd.DataFrame,
    per_prompt: int,
    mix: ResponseMix,
    by_name: dict[str, Intent],
    answerable: tuple[Intent, ...],
) -> pd.DataFrame:
    """``per_prompt`` distinct replies to each prompt, with their attributes."""
    rows = []
    for row in prompts.itertuples(index=False):
        intent, seen = by_name[row.intent], set()
        for position in range(per_prompt):
            for _ in range(MAX_DRAWS_PER_REPLY):  # redraw duplicates: equal replies rank nothing
                attributes = draw_attributes(rng, mix)
                text = compose(rng, attributes, intent, row.slots, answerable)
                if text not in seen:
                    break
            else:
                raise RuntimeError(f"could not draw {per_prompt} distinct replies for {row.prompt!r}")
            seen.add(text)
            rows.append(
                {"prompt_id": row.prompt_id, "intent": row.intent, "refuse": intent.refuse,
                 "prompt": row.prompt, "position": position, "response": text,
                 "n_words": len(text.split()), **attributes}
            )
    return pd.DataFrame(rows)


def _assign_annotators(
    rng: np.random.Generator, n_items: int, n_annotators: int, double_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """(item index, annotator index) per labelling act, grouped by item.

    Every item gets one annotator; a ``double_share`` of items gets a second, different one.
    """
    first = rng.integers(n_annotators, size=n_items)
    doubled = np.sort(rng.choice(n_items, size=round(double_share * n_items), replace=False))
    second = (first[doubled] + rng.integers(1, n_annotators, size=len(doubled))) % n_annotators
    items = np.concatenate([np.arange(n_items), doubled])
    annotators = np.concatenate([first, second])
    order = np.argsort(items, kind="stable")  # the second labelling right after the first
    return items[order], annotators[order]


def generate_world(config: WorldConfig, intents: tuple[Intent, ...] = CATALOGUE) -> World:
    """The whole world for ``config``; same config, same world, byte for byte."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6)]
    eval_rng, rank_rng, sft_rng, candidate_rng, demo_rng, panel_rng = streams
    by_name = {i.name: i for i in intents}
    answerable = tuple(i for i in intents if not i.refuse)

    # Eval prompts are drawn first; every later split is drawn against the same `taken`
    # set, so no eval prompt text can appear in training.
    taken: set[str] = set()
    eval_prompts = sample_prompts(eval_rng, config.n_eval_prompts, intents, taken)
    rank_prompts = sample_prompts(rank_rng, config.n_ranking_items, intents, taken)
    sft_prompts = sample_prompts(sft_rng, config.n_sft_demos, intents, taken)

    k = config.k
    candidates = _replies(candidate_rng, rank_prompts, k, config.candidates, by_name, answerable)
    candidates.insert(0, "item_id", [f"item-{i // k:05d}" for i in range(len(candidates))])

    items, annotators = _assign_annotators(
        panel_rng, config.n_ranking_items, len(config.annotators), config.double_label_share
    )
    features = perceived_features(candidates).reshape(config.n_ranking_items, k, -1)
    ranks = rank_items(panel_rng, features[items], annotators, config.annotators)

    responses = candidates["response"].to_numpy().reshape(config.n_ranking_items, k)
    rankings = [
        {
            "item_id": f"item-{item:05d}",
            "prompt_id": rank_prompts.at[item, "prompt_id"],
            "prompt": rank_prompts.at[item, "prompt"],
            "responses": [str(r) for r in responses[item]],
            "ranks": [int(r) for r in item_ranks],
            "annotator_id": config.annotators[annotator].annotator_id,
        }
        for item, annotator, item_ranks in zip(items, annotators, ranks, strict=True)
    ]

    demos = _replies(demo_rng, sft_prompts, 1, config.demonstrations, by_name, answerable)
    return World(
        rankings=rankings,
        candidates=candidates,
        sft_demonstrations=demos.drop(columns=["position"]),
        eval_prompts=eval_prompts[["prompt_id", "intent", "prompt"]].assign(
            should_refuse=eval_prompts["intent"].map(lambda name: by_name[name].refuse).astype(bool)
        ),
        judge_spec=world_spec(intents=intents),
    )
