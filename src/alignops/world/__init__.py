"""The embedded world: a simulated support desk that makes the RLHF journey runnable offline.

``generate_world(WorldConfig(**params))`` builds prompts, ranked candidate replies,
SFT demonstrations and held-out eval prompts for a seed; ``GoldJudge`` scores any
(prompt, reply) text for evaluation; ``summarise_world`` measures the result.
"""

from alignops.world.config import AnnotatorProfile, ResponseMix, WorldConfig
from alignops.world.generator import World, generate_world
from alignops.world.gold import GoldJudge, GoldWeights
from alignops.world.intents import CATALOGUE, Intent
from alignops.world.spec import world_spec
from alignops.world.summary import ranking_pairs, summarise_world


def default_judge() -> GoldJudge:
    """The gold judge of the built-in catalogue (what ``gold_judge.json`` holds)."""
    return GoldJudge.from_spec(world_spec())


__all__ = [
    "CATALOGUE",
    "AnnotatorProfile",
    "GoldJudge",
    "GoldWeights",
    "Intent",
    "ResponseMix",
    "World",
    "WorldConfig",
    "default_judge",
    "generate_world",
    "ranking_pairs",
    "summarise_world",
    "world_spec",
]
