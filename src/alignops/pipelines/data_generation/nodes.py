"""Nodes of data_generation: build the embedded world and report on it."""

from __future__ import annotations

import pandas as pd

from alignops.world import WorldConfig, generate_world, summarise_world

SFT_COLUMNS = ["prompt_id", "intent", "prompt", "response"]
EVAL_COLUMNS = ["prompt_id", "intent", "prompt", "should_refuse"]  # should_refuse: the report's alignment tax


def generate(params: dict) -> tuple[list[dict], pd.DataFrame, pd.DataFrame, dict, dict]:
    """rankings, SFT demonstrations, eval prompts, gold judge spec and the world summary.

    One node, because the summary needs the replies' latent attributes, which are
    deliberately not part of any exported dataset.
    """
    world = generate_world(WorldConfig(**params))
    return (
        world.rankings,
        world.sft_demonstrations[SFT_COLUMNS].reset_index(drop=True),
        world.eval_prompts[EVAL_COLUMNS].reset_index(drop=True),
        world.judge_spec,
        summarise_world(world),
    )
