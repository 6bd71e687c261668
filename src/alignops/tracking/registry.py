"""The model registry: every run registers its policy and reward model; a gate moves ``champion``.

Each new policy version gets the alias ``candidate``. ``champion`` moves to it only if
it beats the current champion on the gate's metric by the configured margin; the
decision and its reasons are tags on the version, so the UI shows why a model was or
was not promoted. A person overrides the gate by moving the alias (README).
``alignops.tracking.registration.register_run`` does all of it for one run (the registry
pipeline's node only calls it); this module needs MLflow alone, so the promotion CLI and
the Kedro hook start without torch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CANDIDATE, CHAMPION = "candidate", "champion"
METHODS = ("sft", "ppo", "dpo")
METRICS = ("gold_win_rate", "rm_score")
FIGURES = {
    # version tag (eval.<name>) <- evaluation summary key
    "gold_win_rate": "gold_win_rate_vs_sft",
    "gold_mean": "gold_mean",
    "rm_score": "rm_mean",
    "kl_to_sft": "kl_to_sft",
    "mean_length": "mean_length",
}
DATA_TAG_PREFIX = "data/"
"""Run tags ``data/<dataset>/<file name>`` hold each input file's md5 (set by the tracking hook)."""


@dataclass(frozen=True)
class RegistryConfig:
    """What a run registers and how the promotion gate decides (``parameters_registry.yml``)."""

    policy_model: str = "alignops-policy"
    """Registered model name for policies (every method's versions share it)."""
    reward_model: str = "alignops-reward-model"
    """Registered model name for reward models."""
    policy: str = "best"
    """Which of the run's policies is registered: sft, ppo, dpo, or best (the run's best on
    the gate's metric, among those within the KL bound when the metric is rm_score)."""
    metric: str = "auto"
    """gold_win_rate (gold judge's win rate against the run's SFT policy), rm_score (mean
    reward-model score, only within ``max_kl``), or auto: gold where a gold judge scored
    the run, else rm_score."""
    margin: float = 0.02
    """How much a candidate must beat the champion by: evaluation on a few hundred prompts
    moves by a couple of points from seed to seed, and a tie should not churn the alias."""
    max_kl: float = 5.0
    """KL bound (nats per response, against SFT) for promotion on rm_score: a policy far
    from its reference can score high on the reward model by exploiting it."""

    def __post_init__(self) -> None:
        if self.policy not in (*METHODS, "best"):
            raise ValueError(f"registry.policy must be one of {[*METHODS, 'best']}, got {self.policy!r}")
        if self.metric not in (*METRICS, "auto"):
            raise ValueError(f"registry.metric must be one of {[*METRICS, 'auto']}, got {self.metric!r}")
        if self.margin < 0 or self.max_kl <= 0:
            raise ValueError(f"registry.margin must be >= 0 and max_kl > 0, got {self.margin}, {self.max_kl}")


def policy_figures(summary: dict, method: str) -> dict[str, float | None]:
    """A policy's evaluation figures under their registry names (None where not measured)."""
    figures = summary["policies"][method]
    return {name: _number(figures.get(key)) for name, key in FIGURES.items()}


def gate_metric(config: RegistryConfig, figures: dict[str, float | None]) -> str:
    if config.metric != "auto":
        return config.metric
    return "gold_win_rate" if figures.get("gold_win_rate") is not None else "rm_score"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    value: float | None
    champion_version: str | None = None
    champion_value: float | None = None


def decide(
    candidate: dict[str, float | None],
    champion: dict[str, float | None] | None,
    champion_version: str | None,
    config: RegistryConfig,
) -> Decision:
    """Promote ``candidate`` over ``champion`` (figures as in ``policy_figures``)?"""
    metric = gate_metric(config, candidate)
    value = candidate.get(metric)
    if value is None:
        return Decision(False, f"the candidate has no {metric} figure", metric, None)
    if metric == "rm_score":
        kl = candidate.get("kl_to_sft")
        if kl is None or kl > config.max_kl:
            shown = "unknown" if kl is None else f"{kl:.3f}"
            return Decision(False, f"KL to SFT {shown} is over the bound {config.max_kl}", metric, value)
    if champion is None:
        return Decision(True, f"no champion yet; {metric} {value:.3f}", metric, value)
    held = champion.get(metric)
    if held is None:
        return Decision(
            False,
            f"champion v{champion_version} has no {metric} figure to compare with; a person decides",
            metric,
            value,
            champion_version,
        )
    gain = value - held
    verdict = (
        f"{metric} {value:.3f} vs champion v{champion_version} {held:.3f}: {gain:+.3f}, "
        + ("at least" if gain >= config.margin else "under")
        + f" the margin {config.margin}"
    )
    return Decision(gain >= config.margin, verdict, metric, value, champion_version, held)


def choose_policy(summary: dict, config: RegistryConfig) -> str:
    """The method to register: the configured one, or the run's best on the gate's metric."""
    if config.policy != "best":
        return config.policy
    trained = [m for m in METHODS if m in summary["policies"]]
    figures = {m: policy_figures(summary, m) for m in trained}
    metric = gate_metric(config, figures[trained[0]])

    def rank(method: str) -> float:
        value = figures[method].get(metric)
        kl = figures[method].get("kl_to_sft")
        out_of_bound = metric == "rm_score" and (kl is None or kl > config.max_kl)
        return -math.inf if value is None or out_of_bound else value

    return max(trained, key=rank)


def data_hash(run_tags: dict[str, str]) -> str | None:
    """One md5 over the run's ``data/...`` file digests (None when no input file was hashed)."""
    entries = sorted(f"{k}={v}" for k, v in run_tags.items() if k.startswith(DATA_TAG_PREFIX))
    if not entries:
        return None
    return hashlib.md5("\n".join(entries).encode()).hexdigest()


def version_figures(client: MlflowClient, name: str, version: str) -> dict[str, float | None]:
    tags = client.get_model_version(name, version).tags
    return {figure: _number(tags.get(f"eval.{figure}")) for figure in FIGURES}


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Set every tag on one model version."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def apply_gate(
    client: MlflowClient,
    name: str,
    version: str,
    figures: dict[str, float | None],
    config: RegistryConfig,
) -> Decision:
    """Give ``version`` the ``candidate`` alias, move ``champion`` if the gate says so, and
    tag the version with the decision and its reason."""
    champion_version = alias_version(client, name, CHAMPION)
    champion = version_figures(client, name, champion_version) if champion_version else None
    decision = decide(figures, champion, champion_version, config)
    client.set_registered_model_alias(name, CANDIDATE, version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    tag_version(
        client,
        name,
        version,
        {
            "promotion.decision": "promoted" if decision.promote else "held",
            "promotion.reason": decision.reason,
            "promotion.metric": decision.metric,
            "promotion.margin": str(config.margin),
            "promotion.compared_to": f"v{champion_version}" if champion_version else "none",
        },
    )
    return decision


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
