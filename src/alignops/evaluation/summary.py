"""The evaluation summary: every judge's figures per policy with paired bootstrap intervals.

The first judge decides (the gold judge on the embedded world, the audit judge on a
user's data); the others are reported beside it, so on the world the audit judge's
agreement with gold can be seen before it is trusted alone. Every interval resamples
prompts with ONE shared index matrix, so the figures of all policies are paired: SFT
against itself has a win rate of exactly 0.5 with a zero-width interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation.judges import AUDIT, GOLD, Judge, Scorer
from alignops.evaluation.policies import (
    BEST_OF_N,
    REFERENCE,
    EvaluationConfig,
    PolicySamples,
    best_of_n_kl_bound,
    evaluate_policies,
)
from alignops.evaluation.reward import reward_model_accuracy
from alignops.evaluation.statistics import bootstrap_indices, interval_settings, mean_interval, per_prompt, wins
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig

KL_ESTIMATE, KL_BOUND = "estimate", "bound"
"""``kl_to_sft_kind``: a Monte-Carlo estimate from the policy's own samples, or best-of-N's
analytic log N − (N−1)/N, an upper bound on its true KL (Beirami et al. 2024)."""


def policy_figures(
    samples: PolicySamples,
    baseline: PolicySamples,
    judges: Sequence[str],
    indices: np.ndarray,
    samples_per_prompt: int,
    kl_bound: float | None = None,
) -> dict:
    """One policy's figures: per judge its mean score and win rate against ``baseline``, each
    with its interval over the shared prompt ``indices`` (P resampled prompts, each the mean
    of its ``samples_per_prompt`` rows); then the reward model's mean, KL to SFT, length, EOS."""
    figures = {}
    for judge in judges:
        score, base = samples.scores[judge], baseline.scores[judge]  # (N,)
        figures[f"{judge}_mean"] = mean_interval(per_prompt(score, samples_per_prompt), indices).as_dict()
        figures[f"{judge}_win_rate_vs_sft"] = mean_interval(
            per_prompt(wins(score, base), samples_per_prompt), indices
        ).as_dict()
    if kl_bound is None:
        kl, kind = float(samples.kl.mean()), KL_ESTIMATE
    else:
        kl, kind = kl_bound, KL_BOUND
    return figures | {
        "rm_mean": float(samples.rm.mean()),
        "kl_to_sft": kl,
        "kl_to_sft_kind": kind,
        "mean_length": float(samples.lengths.mean()),
        "eos_rate": float(samples.generation.ended_with_eos.float().mean()),
        "n_samples": len(samples.prompts),
    }


def summarise(
    samples: dict[str, PolicySamples],
    judges: Sequence[Judge],
    reward_model: dict,
    audit_judge: dict | None,
    config: EvaluationConfig,
) -> dict:
    """The evaluation summary (``evaluation_summary.json``) of ``samples`` scored by ``judges``
    (the first decides) and the held-out accuracies of the reward model and the audit judge."""
    n_prompts = len(samples[REFERENCE].prompts) // config.samples_per_prompt
    indices = bootstrap_indices(n_prompts, seed=config.seed)  # (resamples, P), shared by every figure
    names = [judge.name for judge in judges]
    policies = {
        name: policy_figures(
            s,
            samples[REFERENCE],
            names,
            indices,
            config.samples_per_prompt,
            best_of_n_kl_bound(config.best_of_n) if name == BEST_OF_N else None,
        )
        for name, s in samples.items()
    }
    if BEST_OF_N in policies:
        policies[BEST_OF_N]["n"] = config.best_of_n
    summary = {
        "judge": names[0],
        "judges": {judge.name: judge.description for judge in judges},
        "interval": interval_settings(),
        "n_prompts": n_prompts,
        "reward_model": reward_model,
    }
    if audit_judge is not None:
        summary["audit_judge"] = audit_judge
    return summary | {"policies": policies}


def evaluate(
    policies: dict[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    score_rm: Scorer,
    judges: Sequence[Judge],
    prompts: list[str],
    heldout: pd.DataFrame,
    model_config: ModelConfig,
    generation: GenerationConfig,
    config: EvaluationConfig,
) -> tuple[dict, dict[str, PolicySamples]]:
    """Sample and score every policy (``evaluate_policies``), measure the reward model and the
    audit judge on ``heldout`` pairs (against gold where a gold judge is among ``judges``),
    and summarise; returns (summary, samples). The first of ``judges`` decides."""
    names = [judge.name for judge in judges]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"evaluation needs at least one judge, each named once; got {names}")
    by_name = {judge.name: judge for judge in judges}
    score_gold = by_name[GOLD].score if GOLD in by_name else None
    samples = evaluate_policies(policies, tokenizer, judges, score_rm, prompts, model_config, generation, config)
    # One seed for both: the two accuracies resample the same pairs.
    reward_model = reward_model_accuracy(heldout, score_rm, score_gold, seed=config.seed)
    audit_judge = (
        reward_model_accuracy(heldout, by_name[AUDIT].score, score_gold, seed=config.seed) if AUDIT in by_name else None
    )
    return summarise(samples, judges, reward_model, audit_judge, config), samples
