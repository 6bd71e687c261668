"""Evaluation nodes: every policy on the held-out prompts, scored by the run's judges and the RM.

On the embedded world the gold judge decides and the audit judge is measured beside it
(its agreement with gold is what makes it trustworthy where no gold exists); on a
user's data the audit judge decides alone; the world's node adds gold to the other's work.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation import GOLD, EvaluationConfig, Judge, evaluate, reward_model_judge
from alignops.evaluation.judges import AUDIT_DESCRIPTION, GOLD_DESCRIPTION
from alignops.evaluation.report import plot_evaluation, samples_table
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.loading import inference_device, place
from alignops.models.reward import RewardEnsemble, RewardModel
from alignops.world import GoldJudge


def evaluate_with_gold_judge(
    sft_model: PreTrainedModel,
    ppo_model: PreTrainedModel,
    dpo_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    audit_judge: RewardModel,
    eval_prompts: pd.DataFrame,
    preferences_heldout: pd.DataFrame,
    gold_judge_spec: dict,
    model_params: dict,
    generation: dict,
    params: dict,
) -> tuple[dict, pd.DataFrame, plt.Figure]:
    """The embedded world: the gold judge decides, the audit judge is measured beside it."""
    gold = Judge(GOLD, GOLD_DESCRIPTION, GoldJudge.from_spec(gold_judge_spec).score)
    return evaluate_with_audit_judge(
        sft_model, ppo_model, dpo_model, tokenizer, reward_model, audit_judge, eval_prompts, preferences_heldout,
        model_params, generation, params, gold=gold,
    )


def evaluate_with_audit_judge(
    sft_model: PreTrainedModel,
    ppo_model: PreTrainedModel,
    dpo_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    audit_judge: RewardModel,
    eval_prompts: pd.DataFrame,
    preferences_heldout: pd.DataFrame,
    model_params: dict,
    generation: dict,
    params: dict,
    gold: Judge | None = None,
) -> tuple[dict, pd.DataFrame, plt.Figure]:
    """A user's data, where no gold judge exists: the audit judge decides. With ``gold`` (the
    world's node), gold decides and the audit judge is measured beside it."""
    config = EvaluationConfig(**params)
    # sampling and scoring follow each model's device
    place([sft_model, ppo_model, dpo_model, reward_model, audit_judge], inference_device())
    audit = reward_model_judge(audit_judge, AUDIT_DESCRIPTION, config.batch_size)
    score_rm = reward_model_judge(reward_model, "the training reward model", config.batch_size, name="rm").score
    summary, samples = evaluate(
        {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model},
        tokenizer,
        score_rm,
        [gold, audit] if gold is not None else [audit],
        eval_prompts["prompt"].tolist(),
        preferences_heldout,
        ModelConfig(**model_params),
        GenerationConfig(**generation),
        config,
    )
    table = samples_table(samples)
    if isinstance(reward_model, RewardEnsemble):
        add_disagreement(summary, table, reward_model, config.batch_size)
    return summary, table, plot_evaluation(summary, table)


def add_disagreement(summary: dict, table: pd.DataFrame, ensemble: RewardEnsemble, batch_size: int) -> None:
    """The ensemble's members' spread on every evaluated reply (``rm_disagreement``, a column of
    the samples) and its mean per policy in the summary: a policy that exploits the reward model
    drifts to replies its members score apart, so its figure climbs above SFT's."""
    table["rm_disagreement"] = ensemble.disagreement(
        table["prompt"].tolist(), table["response"].tolist(), batch_size
    ).numpy()
    for policy, rows in table.groupby("policy", sort=False):
        summary["policies"][policy]["rm_disagreement"] = float(rows["rm_disagreement"].mean())
