"""The run's evaluation in MLflow: its figures as metrics, its words as tags, its generations as one table."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from alignops.tracking.logger import current_run_id

PREFIX = "evaluation"
INTERVAL = ("value", "ci_low", "ci_high")
"""An interval of the summary; its ends are metrics beside the figure, ``<figure>.ci_low`` and
``<figure>.ci_high`` (the names the registry's version tags give them)."""
JUDGE_COLUMNS = {"gold": "gold_score", "audit": "audit_score"}
"""The evaluation samples' judge columns, as the sample table names them."""
SAMPLE_COLUMNS = ["source", "policy", "step", "prompt", "response", "reward_model_score", *JUDGE_COLUMNS.values()]
SAMPLES_ARTIFACT = "tables/sample_generations.json"


def final_steps(histories: dict[str, list[dict]]) -> dict[str, int]:
    """Each stage's last logged step (0 for an empty history): the step its model was saved at."""
    return {stage: int(rows[-1]["step"]) if rows else 0 for stage, rows in histories.items()}


def samples_table(evaluation_samples: pd.DataFrame, ppo_samples: pd.DataFrame, steps: dict[str, int]) -> pd.DataFrame:
    """PPO's rollouts during training (reward-model score only) and every evaluated
    response (the reward model's score and each judge's: gold on the embedded world, the
    audit judge's everywhere; NaN where a judge did not score), each with the training
    step it came from (``steps``, from ``final_steps``, by policy; a policy without one,
    such as best-of-N, is SFT's)."""
    rollouts = ppo_samples.rename(columns={"score": "reward_model_score"}).assign(source="ppo_rollout", policy="ppo")
    evaluated = evaluation_samples.rename(columns={"rm": "reward_model_score", **JUDGE_COLUMNS}).assign(
        source="evaluation", step=evaluation_samples["policy"].map(lambda p: steps.get(p, steps["sft"]))
    )
    return pd.concat(
        [rollouts.reindex(columns=SAMPLE_COLUMNS), evaluated.reindex(columns=SAMPLE_COLUMNS)], ignore_index=True
    )


def evaluation_metrics(summary: dict) -> dict[str, float]:
    """Every number of the evaluation summary as a metric named by its place in it:
    ``evaluation/<policy>/<figure>`` (``evaluation/ppo/gold_win_rate_vs_sft``),
    ``evaluation/<block>/<figure>`` elsewhere (``evaluation/reward_model/panel_accuracy``,
    ``evaluation/n_prompts``); an interval's ends beside its figure as ``.ci_low``/``.ci_high``."""
    return {name: float(value) for name, value in _leaves(summary, PREFIX) if is_number(value)}


def evaluation_tags(summary: dict) -> dict[str, str]:
    """The summary's words as run tags under the same names: whose figures decide
    (``evaluation/judge``), what each judge is (``evaluation/judges/<name>``), how the
    intervals were made, and whether a KL is an estimate or a bound."""
    return {name: value for name, value in _leaves(summary, PREFIX) if isinstance(value, str)}


def log_evaluation_to_run(client: MlflowClient, run_id: str, summary: dict, samples: pd.DataFrame) -> None:
    """The summary's figures as metrics (step 0) and words as tags, and ``samples`` as the run's MLflow table."""
    metrics = [Metric(k, v, 0, 0) for k, v in evaluation_metrics(summary).items()]
    tags = [RunTag(k, v) for k, v in evaluation_tags(summary).items()]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_table(run_id, data=samples, artifact_file=SAMPLES_ARTIFACT)


def is_number(value: object) -> bool:
    """A real number of the summary (an int or a float, not a bool): what becomes a metric or a tag."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaves(node: object, name: str) -> Iterator[tuple[str, object]]:
    """(name, value) of every leaf under ``node``: a policy's figures sit directly under the
    prefix (no ``policies/``), an interval's value takes its figure's own name."""
    if not isinstance(node, dict):
        yield name, node
        return
    interval = set(node) == set(INTERVAL)
    for key, value in node.items():
        if interval:
            child = name if key == "value" else f"{name}.{key}"
        elif name == PREFIX and key == "policies":
            child = name
        else:
            child = f"{name}/{key}"
        yield from _leaves(value, child)


ALARM_TAG = "overoptimisation.alarm"
"""``fired`` or ``quiet``: the report's over-optimisation verdict, one tag to filter runs by."""
PEAK_STEP_TAG = "overoptimisation.peak_step"
"""The PPO step at which the judge's score peaked."""


def frontier_metrics(frontier: dict) -> list[Metric]:
    """PPO's frontier points as metrics at their training step, so the MLflow UI draws the
    judge's and the proxy's scores and √KL against the step: ``frontier/ppo/<judge>``,
    ``frontier/ppo/proxy``, ``frontier/ppo/sqrt_kl`` (each interval's ends beside it); best-of-N's
    at step N as ``frontier/best_of_n/...``."""
    metrics = []
    for point in frontier["points"]:
        step = point["step"] if point["policy"] == "ppo" else point["n"]
        if step is None:  # DPO: one point, its figures are the evaluation's
            continue
        prefix = f"frontier/{point['policy']}"
        metrics.append(Metric(f"{prefix}/sqrt_kl", float(point["sqrt_kl"]), 0, int(step)))
        for key, name in (("judge", frontier["judge"]), ("proxy", "proxy")):
            for end in INTERVAL:
                suffix = "" if end == "value" else f".{end}"
                metrics.append(Metric(f"{prefix}/{name}{suffix}", float(point[key][end]), 0, int(step)))
    return metrics


def log_frontier(frontier: dict, alarm: dict, client: MlflowClient | None = None) -> None:
    """The frontier's metrics and the alarm's tags into the current run (nothing without one)."""
    run_id = current_run_id()
    if run_id is None:
        return
    tags = {
        ALARM_TAG: "fired" if alarm["fired"] else "quiet",
        PEAK_STEP_TAG: str(alarm["peak_step"]),
        "overoptimisation.offered_step": str(alarm["offered_step"]),
        "overoptimisation.message": alarm["message"][:5000],
    }
    (client or MlflowClient()).log_batch(
        run_id, metrics=frontier_metrics(frontier), tags=[RunTag(k, v) for k, v in tags.items()]
    )
