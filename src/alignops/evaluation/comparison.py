"""A candidate policy head to head with a baseline: the promotion gate's evidence.

Both policies answer the same evaluation prompts with the same sampling seed, each with
its own prompt format and generation settings (as each is served: ``load_policy`` gives
them back), and ONE judge scores both replies to every prompt. The statistic is taken
per prompt, candidate against baseline, and its interval resamples prompts (the paired
bootstrap of ``statistics``): a hard prompt is hard for both, so the interval of the
difference is far narrower than two separate intervals would suggest. Identical
policies sample identical replies under the shared seed and give exactly [0, 0].

Comparing each policy's score under its own reward model would reward a policy for
exploiting that reward model; only a common judge (gold, or an audit reward model no
training stage saw) makes the two sides comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation.judges import Judge
from alignops.evaluation.statistics import Interval, bootstrap_indices, mean_interval, per_prompt
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig, sample_responses


def advantage(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """(N,) +1 where the candidate's reply scores higher, 0 on a tie, -1 lower. Its mean is
    P(win) - P(loss) = 2 x win rate - 1 (ties half): 0 between equals, whatever the judge's scale."""
    return np.sign(candidate - baseline)


def score_difference(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """(N,) the judge's score of the candidate's reply minus the baseline's."""
    return candidate - baseline


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "advantage": advantage,
    "score": score_difference,
}
"""The per-sample statistic by ``RegistryConfig.metric``."""


@dataclass(frozen=True)
class Contender:
    """A policy as it samples: weights, tokenizer, prompt format and generation settings
    (the four things ``alignops.tracking.models.load_policy`` returns, in that order)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_config: ModelConfig
    generation: GenerationConfig


@dataclass(frozen=True)
class Comparison:
    """The candidate against the baseline on one prompt set, by one judge."""

    metric: str
    difference: Interval
    """The metric's mean over prompts (candidate minus baseline) and its paired interval."""
    n_prompts: int
    judge: str
    judge_description: str
    candidate_mean: float
    baseline_mean: float
    """The judge's mean score of each side's replies."""


def compare(
    candidate: Contender,
    baseline: Contender,
    prompts: list[str],
    judge: Judge,
    metric: str = "advantage",
    *,
    seed: int,
    batch_size: int,
    samples_per_prompt: int = 1,
) -> Comparison:
    """Sample both policies on the canonical ``prompts`` (``samples_per_prompt`` each, one
    seed for both), score every reply with ``judge``, and bootstrap the per-prompt mean of
    ``METRICS[metric]`` over prompts (resampling indices drawn from ``seed`` too)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    asked = [p for p in prompts for _ in range(samples_per_prompt)]  # prompt-major, as per_prompt reads it
    scores = []
    for side in (candidate, baseline):
        out = sample_responses(
            side.model, side.tokenizer, asked, side.model_config, side.generation, seed=seed, batch_size=batch_size
        )
        scores.append(np.asarray(judge.score(asked, out.texts), dtype=np.float64))  # (P * k,)
    differences = per_prompt(METRICS[metric](*scores), samples_per_prompt)  # (P,)
    return Comparison(
        metric=metric,
        difference=mean_interval(differences, bootstrap_indices(len(prompts), seed=seed)),
        n_prompts=len(prompts),
        judge=judge.name,
        judge_description=judge.description,
        candidate_mean=float(scores[0].mean()),
        baseline_mean=float(scores[1].mean()),
    )
