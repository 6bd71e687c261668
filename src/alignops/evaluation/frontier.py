"""The reward–KL frontier: what each policy bought with its distance from SFT.

Every policy is a point: x is √KL(π ‖ π_sft) in nats, y the deciding judge's mean score
(and, on a second axis, the proxy's: the training reward model's). PPO gives a curve, one
point per snapshot along training (``alignops.training.snapshots``); best-of-N from SFT
samples ranked by the reward model gives a second curve for N = 1, 2, 4, ... (its KL is
the analytic bound log N − (N−1)/N); DPO is one point. Gao, Schulman and Hilton (2022)
measured that the proxy keeps rising with √KL while the true preference peaks and falls:
the frontier is where that shows, and ``overoptimisation`` reads it.

Every point answers the same evaluation prompts as ``evaluate_policies`` with its seed,
so the SFT, final PPO and DPO points are read from the evaluation's own samples (not
drawn again), and all points are paired by prompt: one bootstrap index matrix gives
every interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation.judges import Judge, Scorer
from alignops.evaluation.policies import (
    BEST_OF_N,
    REFERENCE,
    EvaluationConfig,
    best_of_n_kl_bound,
    sample_and_score,
    sample_policy,
)
from alignops.evaluation.statistics import bootstrap_indices, interval_settings, mean_interval, per_prompt, wins
from alignops.evaluation.summary import KL_BOUND, KL_ESTIMATE
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig

PROXY = "rm"
"""The proxy's name in the samples table and the frontier: the training reward model."""


@dataclass(frozen=True)
class ReportConfig:
    """The report stage: the frontier's best-of-N curve, the over-optimisation alarm, and
    how much of each policy's text the HTML report shows."""

    best_of_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    """N of best-of-N's points: one draw of max(N) SFT samples per prompt, the first N of
    them ranked by the reward model for each N (so the curve is one sample set, nested)."""
    consecutive: int = 2
    """Checkpoints in a row, after the judge's peak, that must each score significantly
    below the peak (paired interval of the change entirely below 0) while the proxy scores
    significantly above it, for the alarm to fire. Two, because the peak is the best of
    several noisy means: one checkpoint just below it is what chance alone often gives."""
    side_by_side: int = 12
    """Prompts whose responses the HTML report shows side by side, every policy's."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "best_of_n", tuple(int(n) for n in self.best_of_n))
        if not self.best_of_n or min(self.best_of_n) < 1 or list(self.best_of_n) != sorted(set(self.best_of_n)):
            raise ValueError(f"report.best_of_n must be increasing positive integers, got {list(self.best_of_n)}")
        if self.consecutive < 1 or self.side_by_side < 0:
            raise ValueError("report.consecutive must be >= 1 and report.side_by_side >= 0")


@dataclass
class Curve:
    """One frontier point's raw material: per-prompt means of the judge's and the proxy's scores."""

    policy: str
    label: str
    kl: float
    kl_kind: str
    judge: np.ndarray
    """(P,) the deciding judge's score, mean over each prompt's samples."""
    proxy: np.ndarray
    """(P,) the training reward model's normalised score, likewise."""
    mean_length: float
    step: int | None = None
    n: int | None = None


def from_samples(table: pd.DataFrame, policy: str, judge: str, kl: float, kl_kind: str, samples_per_prompt: int,
                 label: str, step: int | None = None, curve: str | None = None) -> Curve:
    """A policy's point from the evaluation's samples table (``evaluation_samples``), on the
    ``curve`` of another policy where given (SFT is PPO's step 0)."""
    rows = table[table["policy"] == policy]
    return Curve(
        policy=curve or policy,
        label=label,
        kl=kl,
        kl_kind=kl_kind,
        judge=per_prompt(rows[judge].to_numpy(dtype=np.float64), samples_per_prompt),
        proxy=per_prompt(rows[PROXY].to_numpy(dtype=np.float64), samples_per_prompt),
        mean_length=float(rows["length"].mean()),
        step=step,
    )


def snapshot_curve(model: PreTrainedModel, reference: PreTrainedModel, step: int, tokenizer: PreTrainedTokenizerBase,
                   judge: Judge, score_rm: Scorer, prompts: list[str], model_config: ModelConfig,
                   generation: GenerationConfig, config: EvaluationConfig) -> Curve:
    """A PPO snapshot sampled as evaluation samples every policy (same prompts, same seed),
    scored by the judge and the proxy, with its Monte-Carlo KL to SFT at the sampling temperature."""
    asked = [p for p in prompts for _ in range(config.samples_per_prompt)]  # prompt-major
    samples = sample_and_score(model, reference, tokenizer, [judge], score_rm, asked, model_config, generation,
                               config)
    k = config.samples_per_prompt
    return Curve(
        policy="ppo",
        label=f"PPO step {step}",
        kl=float(samples.kl.mean()),
        kl_kind=KL_ESTIMATE,
        judge=per_prompt(samples.scores[judge.name], k),
        proxy=per_prompt(np.asarray(samples.rm, dtype=np.float64), k),
        mean_length=float(samples.generation.response_mask.sum(1).float().mean()),  # a float32 mean, as recorded before
        step=step,
    )


def best_of_n_curves(reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, judge: Judge,
                     score_rm: Scorer, prompts: list[str], model_config: ModelConfig, generation: GenerationConfig,
                     config: EvaluationConfig, ns: Sequence[int]) -> list[Curve]:
    """Best-of-N for every N in ``ns``: max(ns) SFT samples per prompt (the evaluation's
    best-of-N seed), and for each N the reward model's pick among the first N."""
    top = max(ns)
    asked = [p for p in prompts for _ in range(config.samples_per_prompt)]
    repeated = [p for p in asked for _ in range(top)]  # row i*top + j: the j-th draw for row i
    out = sample_policy(reference, tokenizer, repeated, model_config, generation, config, config.seed + 1)
    rm = np.asarray(score_rm(repeated, out.texts), dtype=np.float64).reshape(len(asked), top)
    gold = np.asarray(judge.score(repeated, out.texts), dtype=np.float64).reshape(len(asked), top)
    lengths = out.response_mask.sum(1).float().numpy().reshape(len(asked), top)
    curves, rows = [], np.arange(len(asked))
    for n in ns:
        pick = rm[:, :n].argmax(1)  # (rows,) the reward model's choice among the first n draws
        curves.append(Curve(
            policy=BEST_OF_N,
            label=f"best-of-{n}",
            kl=best_of_n_kl_bound(n),
            kl_kind=KL_BOUND,
            judge=per_prompt(gold[rows, pick], config.samples_per_prompt),
            proxy=per_prompt(rm[rows, pick], config.samples_per_prompt),
            mean_length=float(lengths[rows, pick].mean()),
            n=n,
        ))
    return curves


def point(curve: Curve, sft: Curve, indices: np.ndarray) -> dict:
    """A curve as a frontier point (spec: ``frontier.json``'s ``points``), every figure with
    its interval over the shared prompt ``indices``."""
    return {
        "policy": curve.policy,
        "step": curve.step,
        "n": curve.n,
        "label": curve.label,
        "kl": curve.kl,
        "kl_kind": curve.kl_kind,
        "sqrt_kl": float(np.sqrt(max(curve.kl, 0.0))),  # a k1 estimate of a tiny KL can dip below 0
        "judge": mean_interval(curve.judge, indices).as_dict(),
        "proxy": mean_interval(curve.proxy, indices).as_dict(),
        "win_rate_vs_sft": mean_interval(wins(curve.judge, sft.judge), indices).as_dict(),
        "mean_length": curve.mean_length,
    }


PPO_SETTINGS = ("kl_coef", "kl_controller", "steps", "snapshot_every", "learning_rate")
"""What a frontier records of the PPO run that drew it: the settings that move a run along its
frontier (the KL penalty above all), so a sweep's curves label themselves."""


def frontier(curves: list[Curve], judge: Judge, seed: int, ppo: dict | None = None) -> dict:
    """``frontier.json``: ``curves`` (SFT's first) as points with paired intervals, and
    ``PPO_SETTINGS`` of the ``ppo`` parameters that drew them."""
    sft = curves[0]
    if sft.step != 0 or sft.policy != "ppo":
        raise ValueError("the first curve must be PPO's step 0, the SFT policy")
    indices = bootstrap_indices(len(sft.judge), seed=seed)  # (resamples, P): one matrix pairs every point
    return {
        "judge": judge.name,
        "judge_description": judge.description,
        "proxy": PROXY,
        "interval": interval_settings(),
        "n_prompts": len(sft.judge),
        "ppo": {key: (ppo or {})[key] for key in PPO_SETTINGS if key in (ppo or {})},
        "points": [point(curve, sft, indices) for curve in curves],
    }


def ppo_curves(snapshots: dict[int, Callable[[], PreTrainedModel]], reference: PreTrainedModel, last_step: int,
               table: pd.DataFrame, summary: dict, tokenizer: PreTrainedTokenizerBase, judge: Judge,
               score_rm: Scorer, prompts: list[str], model_config: ModelConfig, generation: GenerationConfig,
               config: EvaluationConfig) -> list[Curve]:
    """PPO from step 0 (the SFT policy's evaluation samples) through each snapshot (loaded one
    at a time) to ``last_step`` (the final policy's evaluation samples)."""
    k, name = config.samples_per_prompt, summary["judge"]
    ppo_kl = summary["policies"]["ppo"]["kl_to_sft"]
    curves = [from_samples(table, REFERENCE, name, 0.0, KL_ESTIMATE, k, "PPO step 0 (SFT)", step=0, curve="ppo")]
    for step, load in sorted(snapshots.items()):
        if 0 < step < last_step:
            curves.append(snapshot_curve(load(), reference, step, tokenizer, judge, score_rm, prompts, model_config,
                                         generation, config))
    curves.append(from_samples(table, "ppo", name, ppo_kl, KL_ESTIMATE, k, f"PPO step {last_step}", step=last_step))
    return curves
