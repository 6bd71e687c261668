"""The run's evaluation in MLflow: its figures as metrics, its generations as one table."""

from __future__ import annotations

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

SAMPLE_COLUMNS = ["source", "policy", "step", "prompt", "response", "reward_model_score", "gold_score"]
SAMPLES_ARTIFACT = "tables/sample_generations.json"


def final_steps(histories: dict[str, list[dict]]) -> dict[str, int]:
    """Each stage's last logged step (0 for an empty history): the step its model was saved at."""
    return {stage: int(rows[-1]["step"]) if rows else 0 for stage, rows in histories.items()}


def samples_table(evaluation_samples: pd.DataFrame, ppo_samples: pd.DataFrame, steps: dict[str, int]) -> pd.DataFrame:
    """PPO's rollouts during training (reward-model score only) and every evaluated
    response (gold and reward-model scores), each with the training step it came from
    (``steps``, from ``final_steps``, by policy; a policy without one, such as best-of-N,
    is SFT's)."""
    rollouts = ppo_samples.rename(columns={"score": "reward_model_score"}).assign(
        source="ppo_rollout", policy="ppo", gold_score=float("nan")
    )
    evaluated = evaluation_samples.rename(columns={"rm": "reward_model_score", "gold": "gold_score"}).assign(
        source="evaluation", step=evaluation_samples["policy"].map(lambda p: steps.get(p, steps["sft"]))
    )
    return pd.concat([rollouts[SAMPLE_COLUMNS], evaluated[SAMPLE_COLUMNS]], ignore_index=True)


def evaluation_metrics(summary: dict) -> dict[str, float]:
    """Every number of the evaluation summary as ``evaluation/<policy or reward_model>/<figure>``."""
    metrics = {}
    for policy, figures in summary["policies"].items():
        metrics.update({f"evaluation/{policy}/{k}": float(v) for k, v in figures.items() if is_number(v)})
    metrics.update(
        {f"evaluation/reward_model/{k}": float(v) for k, v in summary["reward_model"].items() if is_number(v)}
    )
    return metrics


def log_evaluation_to_run(client: MlflowClient, run_id: str, summary: dict, samples: pd.DataFrame) -> None:
    """The summary's figures as metrics (step 0) and ``samples`` as the run's MLflow table."""
    metrics = [Metric(k, v, 0, 0) for k, v in evaluation_metrics(summary).items()]
    client.log_batch(run_id, metrics=metrics)
    client.log_table(run_id, data=samples, artifact_file=SAMPLES_ARTIFACT)


def is_number(value: object) -> bool:
    """A real number of the summary (an int or a float, not a bool): what becomes a metric or a tag."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
