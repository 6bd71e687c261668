"""Registering a run's models: log both, register them, tag the versions, run the gate.

Apart from ``registry`` (the gate and the tags, which need MLflow alone) because it loads
the models' code: the promotion CLI and the Kedro hook import ``registry`` without torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import mlflow
from mlflow.tracking import MlflowClient
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardModel
from alignops.tracking.evaluation import is_number
from alignops.tracking.models import log_policy, log_reward_model
from alignops.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    Evidence,
    NoEvidence,
    RegistryConfig,
    alias_version,
    apply_gate,
    choose_policy,
    compared_to,
    data_hash,
    decide,
    held_without_evidence,
    judge_doubt,
    lineage_tags,
    policy_figures,
    tag_version,
)
from alignops.tracking.store import store_lock

logger = logging.getLogger(__name__)

HeadToHead = Callable[[str, str | None], Evidence]
"""(the candidate's model URI, the champion's model URI or None) -> the evidence: the
candidate loaded back from the registry against the champion, or against the run's own
SFT policy when there is no champion yet (``alignops.pipelines.registry.nodes``). Raises
``NoEvidence`` when the comparison cannot be made; the candidate is then held."""


def register_run(
    client: MlflowClient,
    run_id: str,
    policies: dict[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardModel,
    summary: dict,
    model_config: ModelConfig,
    generation: GenerationConfig,
    config: RegistryConfig,
    head_to_head: HeadToHead,
    method_tags: dict[str, dict[str, str]] | None = None,
) -> dict:
    """Log and register the run's reward model and its chosen policy (``policies`` by method),
    tag both versions with their evaluation figures and data hash, make the policy the
    ``candidate``, judge it with ``head_to_head`` and run the gate. ``method_tags``: more tags
    for the policy version by method (PPO's: the checkpoint offered, the alarm's verdict).
    Returns the decision as the registry pipeline saves it (``registry_decision``)."""
    run_tags = client.get_run(run_id).data.tags
    digest = data_hash(run_tags)
    lineage = lineage_tags(run_tags)
    if digest:
        client.set_tag(run_id, "data.hash", digest)

    rm_info = log_reward_model(reward_model)
    rm_version = str(mlflow.register_model(rm_info.model_uri, config.reward_model).version)
    tag_version(
        client,
        config.reward_model,
        rm_version,
        {
            "data_hash": digest or "unknown",
            "run_id": run_id,
            **lineage,
            **reward_model_tags(summary["reward_model"]),
        },
    )
    client.set_registered_model_alias(config.reward_model, CANDIDATE, rm_version)

    method = choose_policy(summary, config)
    figures = policy_figures(summary, method)
    # the served defaults are the settings the policy was evaluated with
    served = {"max_new_tokens": generation.max_new_tokens, "do_sample": True, **generation.sampling_kwargs()}
    info = log_policy(policies[method], tokenizer, model_config, served)
    version = str(mlflow.register_model(info.model_uri, config.policy_model).version)
    tag_version(
        client,
        config.policy_model,
        version,
        {
            "method": method,
            "data_hash": digest or "unknown",
            "run_id": run_id,
            **lineage,
            "reward_model_version": rm_version,
            **{f"eval.{k}": _tag_value(v) for k, v in figures.items()},
            **(method_tags or {}).get(method, {}),
        },
    )
    client.update_model_version(
        config.policy_model,
        version,
        description=f"{method.upper()} policy of run {run_id}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if "." not in k),
    )
    client.set_registered_model_alias(config.policy_model, CANDIDATE, version)

    # The registered artifact is what gets judged, against the champion as it was registered.
    champion_version = alias_version(client, config.policy_model, CHAMPION)
    baseline = compared_to(champion_version)
    try:
        doubt = judge_doubt(summary, config)
        if doubt:  # no head-to-head: a judge no better than chance would decide by coin
            raise NoEvidence(doubt)
        evidence = head_to_head(
            f"models:/{config.policy_model}/{version}",
            f"models:/{config.policy_model}/{champion_version}" if champion_version else None,
        )
        decision = decide(evidence, config.margin, baseline)
    except NoEvidence as missing:
        decision = held_without_evidence(missing, config.margin, baseline)
    # Another run's gate may act at the same time: reading the champion again and moving it,
    # the policy's and then its reward model's, is one step (alignops.tracking.store)
    with store_lock(mlflow.get_registry_uri()):
        decision = apply_gate(client, config.policy_model, version, decision, champion_version)
        if decision.promote:
            # the run's reward model goes with its champion policy (a PPO policy was trained against it)
            client.set_registered_model_alias(config.reward_model, CHAMPION, rm_version)
    client.set_tag(run_id, "registry.policy_version", version)
    client.set_tag(run_id, "registry.decision", "promoted" if decision.promote else "held")
    logger.info(
        "Registered %s v%s (%s): %s — %s",
        config.policy_model,
        version,
        method,
        "promoted to champion" if decision.promote else "stays candidate",
        decision.reason,
    )
    return {
        "policy_model": config.policy_model,
        "policy_version": version,
        "method": method,
        "promoted": decision.promote,
        **decision.as_dict(),
        # whose verdict it was (or would have been, when none was taken): the evaluation's judge
        "judge": decision.evidence.judge if decision.evidence else summary.get("judge"),
        "champion_version": version if decision.promote else champion_version,
        "figures": figures,
        "reward_model": config.reward_model,
        "reward_model_version": rm_version,
        "data_hash": digest,
        "run_id": run_id,
    }


def _tag_value(value: float) -> str:
    """Counts as counts (``84``), figures to four places (``0.7667``)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else f"{value:.4f}"


def reward_model_tags(figures: dict) -> dict[str, str]:
    """The reward model's held-out figures as ``eval.*`` version tags, an interval's ends beside
    its value (``eval.panel_accuracy``, ``eval.panel_accuracy.ci_low``, ...)."""
    tags = {}
    for name, value in figures.items():
        if isinstance(value, dict):
            tags[f"eval.{name}"] = _tag_value(value["value"]) if is_number(value.get("value")) else None
            tags |= {f"eval.{name}.{end}": _tag_value(value[end]) for end in ("ci_low", "ci_high")
                     if is_number(value.get(end))}
        elif is_number(value):
            tags[f"eval.{name}"] = _tag_value(value)
    return {k: v for k, v in tags.items() if v is not None}
