"""Who judges the policies: the world's gold judge, or an audit judge on a user's data.

The training reward model is the proxy PPO optimises; it never judges its own policy.
On the embedded world the gold judge (noise-free) decides; on a user's data an
**audit judge** does: a reward model trained on a disjoint part of the preferences
that no training stage saw, or a Hugging Face sequence classifier named in
configuration. Either way a judge is a name, a sentence saying what it is (it goes
into the evaluation summary beside every figure it produced), and a scorer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Scorer = Callable[[list[str], list[str]], np.ndarray]
"""(canonical prompts, responses) -> (N,) scores, higher is better."""

GOLD, AUDIT = "gold", "audit"
GOLD_DESCRIPTION = "the embedded world's noise-free judge of replies (alignops.world.GoldJudge); no stage trains on it"
AUDIT_DESCRIPTION = (
    "a reward model no policy was trained against (the audit_judge dataset: trained on the preferences' "
    "audit split, disjoint from every training stage's data, or a pretrained classifier)"
)
"""What the summary and the registry's tags say each judge is: evaluation and the gate use the same words."""


@dataclass(frozen=True)
class Judge:
    name: str
    """``gold`` or ``audit``: the prefix of every figure this judge produced."""
    description: str
    """What the judge is, for the summary and the registry tags."""
    score: Scorer


def reward_model_judge(reward_model, description: str, batch_size: int = 64, name: str = AUDIT) -> Judge:
    """A judge scoring with ``reward_model.score`` (normalised: its scale is the SFT policy's spread)."""

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        return reward_model.score(list(prompts), list(responses), batch_size=batch_size).cpu().numpy()

    return Judge(name, description, score)
