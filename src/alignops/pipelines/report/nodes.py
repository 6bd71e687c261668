"""Report nodes: the reward–KL frontier and its alarm, per-policy diagnostics, one HTML page.

The judge is evaluation's deciding one (gold on the embedded world, the audit judge on a
user's data): the frontier node for each, as evaluation has. The SFT, final PPO and DPO
points are evaluation's own samples; the PPO snapshots and the best-of-N draws are sampled
here with evaluation's seed and settings, so every point answers the same prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation import GOLD, EvaluationConfig, Judge, reward_model_judge
from alignops.evaluation.diagnostics import diagnose
from alignops.evaluation.frontier import ReportConfig, best_of_n_curves, from_samples, frontier, ppo_curves
from alignops.evaluation.frontier_plots import plot_frontier
from alignops.evaluation.html_report import render_report
from alignops.evaluation.judges import AUDIT_DESCRIPTION, GOLD_DESCRIPTION
from alignops.evaluation.overoptimisation import check
from alignops.evaluation.summary import KL_ESTIMATE
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.loading import inference_device, place
from alignops.models.reward import RewardModel
from alignops.tracking.evaluation import log_frontier
from alignops.training.snapshots import snapshot_step
from alignops.world import GoldJudge

logger = logging.getLogger(__name__)


def frontier_with_gold_judge(
    sft_model: PreTrainedModel,
    ppo_snapshots: dict[str, Callable[[], PreTrainedModel]],
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    eval_prompts: pd.DataFrame,
    evaluation_summary: dict,
    evaluation_samples: pd.DataFrame,
    gold_judge_spec: dict,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    ppo: dict,
    params: dict,
) -> tuple[dict, dict]:
    """The embedded world: the frontier by the gold judge."""
    judge = Judge(GOLD, GOLD_DESCRIPTION, GoldJudge.from_spec(gold_judge_spec).score)
    return measure_frontier(sft_model, ppo_snapshots, tokenizer, reward_model, eval_prompts, evaluation_summary,
                            evaluation_samples, judge, model_params, generation, evaluation, ppo, params)


def frontier_with_audit_judge(
    sft_model: PreTrainedModel,
    ppo_snapshots: dict[str, Callable[[], PreTrainedModel]],
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    eval_prompts: pd.DataFrame,
    evaluation_summary: dict,
    evaluation_samples: pd.DataFrame,
    audit_judge: RewardModel,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    ppo: dict,
    params: dict,
) -> tuple[dict, dict]:
    """A user's data: the frontier by the audit judge."""
    place([audit_judge], inference_device())
    judge = reward_model_judge(audit_judge, AUDIT_DESCRIPTION, EvaluationConfig(**evaluation).batch_size)
    return measure_frontier(sft_model, ppo_snapshots, tokenizer, reward_model, eval_prompts, evaluation_summary,
                            evaluation_samples, judge, model_params, generation, evaluation, ppo, params)


def measure_frontier(
    sft_model: PreTrainedModel,
    ppo_snapshots: dict[str, Callable[[], PreTrainedModel]],
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    eval_prompts: pd.DataFrame,
    summary: dict,
    samples: pd.DataFrame,
    judge: Judge,
    model_params: dict,
    generation: dict,
    evaluation: dict,
    ppo: dict,
    params: dict,
) -> tuple[dict, dict]:
    """(frontier, overoptimisation): every point with its paired intervals, and the alarm's
    verdict on the PPO points; both also into the MLflow run (metrics by step, tags)."""
    if judge.name != summary["judge"]:
        raise ValueError(f"the frontier's judge ({judge.name}) must be evaluation's ({summary['judge']})")
    config, sampling = ReportConfig(**params), EvaluationConfig(**evaluation)
    model_config, settings = ModelConfig(**model_params), GenerationConfig(**generation)
    place([sft_model, reward_model], inference_device())
    score_rm = reward_model_judge(reward_model, "the training reward model", sampling.batch_size, name="rm").score
    prompts = eval_prompts["prompt"].tolist()
    snapshots = {snapshot_step(name): load for name, load in ppo_snapshots.items()}
    trained = ppo_curves(snapshots, sft_model, int(ppo["steps"]), samples, summary, tokenizer, judge, score_rm, prompts,
                     model_config, settings, sampling)
    best = best_of_n_curves(sft_model, tokenizer, judge, score_rm, prompts, model_config, settings, sampling,
                            config.best_of_n)
    dpo = from_samples(samples, "dpo", judge.name, summary["policies"]["dpo"]["kl_to_sft"], KL_ESTIMATE,
                       sampling.samples_per_prompt, "DPO")
    result = frontier([*trained, *best, dpo], judge, sampling.seed, ppo)
    alarm = check([c.step for c in trained], np.stack([c.judge for c in trained]),
                  np.stack([c.proxy for c in trained]),
                  config.consecutive, sampling.seed, judge.name)
    (logger.warning if alarm["fired"] else logger.info)("report: %s", alarm["message"])
    log_frontier(result, alarm)
    return result, alarm


def diagnose_policies(
    evaluation_samples: pd.DataFrame, eval_prompts: pd.DataFrame, evaluation_summary: dict, evaluation: dict
) -> dict:
    """Length, distinct-2, repetition, EOS and refusals per policy; the alignment tax where the
    evaluation prompts say which should be refused (a ``should_refuse`` column)."""
    sampling = EvaluationConfig(**evaluation)
    labels = eval_prompts["should_refuse"].to_numpy(dtype=bool) if "should_refuse" in eval_prompts else None
    return diagnose(evaluation_samples, evaluation_summary["judge"], labels, sampling.samples_per_prompt, sampling.seed)


def write_report(
    evaluation_summary: dict,
    frontier: dict,
    overoptimisation: dict,
    policy_diagnostics: dict,
    evaluation_samples: pd.DataFrame,
    params: dict,
) -> tuple[str, plt.Figure]:
    """The self-contained HTML report, and the frontier plot on its own (an MLflow artifact)."""
    config = ReportConfig(**params)
    html = render_report(evaluation_summary, frontier, overoptimisation, policy_diagnostics, evaluation_samples,
                         n_side_by_side=config.side_by_side)
    return html, plot_frontier([("this run", frontier)], overoptimisation)
