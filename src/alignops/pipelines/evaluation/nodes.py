"""Evaluation node: every policy on the held-out prompts, scored by the gold judge and the RM."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.evaluation import EvaluationConfig, evaluate_policies, reward_model_accuracy
from alignops.evaluation.report import plot_evaluation, samples_table
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.world import GoldJudge


def evaluate(
    sft_model: PreTrainedModel,
    ppo_model: PreTrainedModel,
    dpo_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model,
    eval_prompts: pd.DataFrame,
    gold_judge_spec: dict,
    preferences_heldout: pd.DataFrame,
    model_params: dict,
    generation: dict,
    params: dict,
) -> tuple[dict, pd.DataFrame, plt.Figure]:
    config = EvaluationConfig(**params)
    judge = GoldJudge.from_spec(gold_judge_spec)

    def score_rm(prompts, responses):
        return reward_model.score(prompts, responses, batch_size=config.batch_size).cpu().numpy()

    policies, samples = evaluate_policies(
        {"sft": sft_model, "ppo": ppo_model, "dpo": dpo_model},
        tokenizer,
        judge.score,
        score_rm,
        eval_prompts["prompt"].tolist(),
        ModelConfig(**model_params),
        GenerationConfig(**generation),
        config,
    )
    summary = {
        "reward_model": reward_model_accuracy(preferences_heldout, score_rm, judge.score),
        "policies": policies,
    }
    table = samples_table(samples)
    return summary, table, plot_evaluation(summary, table)
