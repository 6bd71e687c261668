"""The model registry: every run registers its policy and reward model; a gate moves ``champion``.

Each new policy version gets the alias ``candidate``. ``champion`` moves to it only on
evidence: the candidate and the current champion (or, before there is one, the run's
own SFT policy) answer the same evaluation prompts, one judge scores both, and the
lower end of the paired bootstrap interval of the per-prompt difference must be above
``margin``. The comparison itself is ``alignops.evaluation.comparison`` (tracking does
not import evaluation); here it arrives as an ``Evidence``. The decision, its interval
and its reason are tags on the version, so the UI shows why a model was or was not
promoted. A person overrides the gate by moving the alias (README).

``alignops.tracking.registration.register_run`` does all of it for one run; this module
needs MLflow alone, so the promotion CLI and the Kedro hook start without torch.
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
METRICS = ("advantage", "score")
SFT_BASELINE = "sft of this run"
"""``compared_to`` when there was no champion: the candidate had to beat its own SFT policy."""
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
    """Which of the run's policies is registered: sft, ppo, dpo, or best (the highest win rate
    against the run's SFT policy by the evaluation summary's judge, gold or audit). Never the
    reward model's own score: a policy that exploits its reward model would rank first."""
    metric: str = "advantage"
    """The per-prompt statistic of the head-to-head, candidate against baseline, same judge:
    ``advantage`` = P(candidate's reply scores higher) - P(lower), the mean of
    sign(s_candidate - s_baseline) over prompts, in [-1, 1] (= 2 x win rate - 1, ties
    counting half; 0 for identical policies); ``score`` = the mean difference of the judge's
    scores, in the judge's units. The advantage does not depend on the judge's scale, so
    one margin means the same thing under gold and under an audit reward model."""
    margin: float = 0.02
    """The lower end of the 95% paired interval of the metric must be strictly above this
    for ``champion`` to move. The interval carries the noise (on 300 prompts an advantage's
    interval is about +-0.1 wide when most replies differ); the margin is the smallest gain
    worth a new champion: 0.02 of advantage is one prompt in a hundred won rather than lost."""
    min_judge_accuracy: float = 0.5
    """An audit judge's verdict counts only if the lower end of its held-out pairwise
    accuracy interval (against the labels of ``preferences_heldout``) is above this: a
    judge that cannot be told from a coin on pairs it never saw is no evidence, and every
    candidate is held for a person to decide. 0.5 is chance; 0 turns the check off. The
    gold judge is the truth and is not checked."""

    def __post_init__(self) -> None:
        if self.policy not in (*METHODS, "best"):
            raise ValueError(f"registry.policy must be one of {[*METHODS, 'best']}, got {self.policy!r}")
        if self.metric not in METRICS:
            raise ValueError(f"registry.metric must be one of {list(METRICS)}, got {self.metric!r}")
        if not self.margin >= 0:
            raise ValueError(f"registry.margin must be >= 0, got {self.margin}")
        if not 0 <= self.min_judge_accuracy < 1:
            raise ValueError(f"registry.min_judge_accuracy must lie in [0, 1), got {self.min_judge_accuracy}")


def judge_doubt(summary: dict, config: RegistryConfig) -> str | None:
    """Why the summary's audit judge cannot decide (its held-out accuracy interval reaches down
    to ``config.min_judge_accuracy``), or None when it can, or when gold judges."""
    if summary.get("judge") != "audit" or config.min_judge_accuracy <= 0:
        return None
    accuracy = (summary.get("audit_judge") or {}).get("panel_accuracy")
    if not isinstance(accuracy, dict) or _number(accuracy.get("ci_low")) is None:
        return "the audit judge has no held-out accuracy to show it tells better replies from worse"
    if accuracy["ci_low"] > config.min_judge_accuracy:
        return None
    return (
        f"the audit judge's held-out pairwise accuracy {accuracy['value']:.3f} "
        f"[{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}] does not clear "
        f"{config.min_judge_accuracy} (registry.min_judge_accuracy): its verdict is no evidence"
    )


def policy_figures(summary: dict, method: str) -> dict[str, float]:
    """A policy's evaluation figures, flat, under their summary names: the judge's win rate
    against SFT and mean score with ``.ci_low``/``.ci_high`` beside each, then the reward
    model's mean, the KL to SFT and the mean length (what was measured, nothing more)."""
    judge = summary["judge"]
    entries = summary["policies"][method]
    figures: dict[str, float] = {}
    for key in (f"{judge}_win_rate_vs_sft", f"{judge}_mean"):
        entry = entries.get(key)
        if isinstance(entry, dict) and _number(entry.get("value")) is not None:
            figures[key] = float(entry["value"])
            for end in ("ci_low", "ci_high"):
                if _number(entry.get(end)) is not None:
                    figures[f"{key}.{end}"] = float(entry[end])
    for key in ("rm_mean", "kl_to_sft", "mean_length"):
        if _number(entries.get(key)) is not None:
            figures[key] = float(entries[key])
    return figures


def choose_policy(summary: dict, config: RegistryConfig) -> str:
    """The method to register: the configured one, or the run's highest win rate against
    SFT by the summary's judge (SFT on a tie: it is the simpler policy)."""
    if config.policy != "best":
        return config.policy
    key = f"{summary['judge']}_win_rate_vs_sft"
    trained = [m for m in METHODS if m in summary["policies"]]

    def rank(method: str) -> float:
        return policy_figures(summary, method).get(key, -math.inf)

    return max(trained, key=rank)


@dataclass(frozen=True)
class Evidence:
    """A candidate head to head with a baseline on the same prompts, as the gate reads it
    (``alignops.evaluation.comparison.compare`` measures it)."""

    metric: str
    """``advantage`` or ``score`` (``RegistryConfig.metric``)."""
    value: float
    """The metric's mean over prompts, candidate minus baseline."""
    ci_low: float
    ci_high: float
    """The paired percentile bootstrap interval of ``value``, resampling prompts."""
    n_prompts: int
    judge: str
    """The judge's name (``gold`` or ``audit``) and what it is."""
    judge_description: str
    candidate_mean: float
    baseline_mean: float
    """The judge's mean score of each side's replies, for the reader."""
    level: float = 0.95
    """The interval's two-sided coverage."""


class NoEvidence(Exception):
    """The head-to-head could not be run, e.g. the champion was logged in a format this code
    no longer loads: the candidate is held with this reason and a person decides."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    evidence: Evidence | None
    """None when there was no head-to-head (``NoEvidence``)."""
    compared_to: str
    """``v<N>`` (the champion) or ``SFT_BASELINE``."""
    margin: float

    def as_dict(self) -> dict[str, Any]:
        """What the decision file and the version's ``promotion.*`` tags hold (None: not measured)."""

        def measured(name: str) -> Any:
            return None if self.evidence is None else getattr(self.evidence, name)

        return {
            "decision": "promoted" if self.promote else "held",
            "reason": self.reason,
            "metric": measured("metric"),
            "value": measured("value"),
            "ci_low": measured("ci_low"),
            "ci_high": measured("ci_high"),
            "margin": self.margin,
            "n_prompts": measured("n_prompts"),
            "judge": measured("judge"),
            "judge_description": measured("judge_description"),
            "compared_to": self.compared_to,
            "candidate_mean": measured("candidate_mean"),
            "baseline_mean": measured("baseline_mean"),
        }


def decide(evidence: Evidence, margin: float, compared_to: str) -> Decision:
    """Promote iff the interval's lower end is strictly above ``margin``: a candidate no
    better than its baseline (identical policies give [0, 0]) never takes the alias."""
    promote = evidence.ci_low > margin
    reason = (
        f"{evidence.metric} {evidence.value:+.3f} [{evidence.ci_low:+.3f}, {evidence.ci_high:+.3f}] "
        f"vs {_baseline(compared_to)}, {evidence.judge} judge on {evidence.n_prompts} prompts: lower end "
        + ("above" if promote else "under")
        + f" the margin {margin} → "
        + ("promoted" if promote else "held")
    )
    return Decision(promote, reason, evidence, compared_to, margin)


def held_without_evidence(missing: NoEvidence, margin: float, compared_to: str) -> Decision:
    """No head-to-head, no promotion."""
    return Decision(
        False,
        f"no comparison with {_baseline(compared_to)}: {missing} → held; a person decides",
        None,
        compared_to,
        margin,
    )


def _baseline(compared_to: str) -> str:
    return "this run's SFT policy (no champion yet)" if compared_to == SFT_BASELINE else f"champion {compared_to}"


def data_hash(run_tags: dict[str, str]) -> str | None:
    """One md5 over the run's ``data/...`` file digests (None when no input file was hashed)."""
    entries = sorted(f"{k}={v}" for k, v in run_tags.items() if k.startswith(DATA_TAG_PREFIX))
    if not entries:
        return None
    return hashlib.md5("\n".join(entries).encode()).hexdigest()


LINEAGE_PREFIXES = ("git.", "dvc.")


def lineage_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """What rebuilds a registered model, from its run's tags: the git commit and whether the
    tree was dirty, and under DVC the stage, the experiment and the ``dvc.lock`` digests of
    the run's inputs (``dvc.dep.<path>``)."""
    return {k: v for k, v in run_tags.items() if k.startswith(LINEAGE_PREFIXES)}


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Set every tag on one model version."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def compared_to(champion_version: str | None) -> str:
    """What a candidate is judged against: the champion, or this run's SFT policy before there is one."""
    return f"v{champion_version}" if champion_version else SFT_BASELINE


def apply_gate(
    client: MlflowClient,
    name: str,
    version: str,
    decision: Decision,
    champion_version: str | None,
) -> Decision:
    """Act on ``decision`` (made against ``champion_version``, or this run's SFT policy when
    None): move ``champion`` to ``version`` if it says so, and tag the version with it.

    The alias is read again first: if another run moved it while this one was being judged,
    the evidence is against a version that is no longer champion, and the candidate is held.
    """
    current = alias_version(client, name, CHAMPION)
    if current != champion_version:
        decision = Decision(
            False,
            f"champion moved to v{current} while this candidate was judged against {decision.compared_to}; "
            "held (a person decides, or the next run compares with the new champion)",
            decision.evidence,
            decision.compared_to,
            decision.margin,
        )
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    tags = {f"promotion.{k}": _tag(v) for k, v in decision.as_dict().items() if v is not None}
    tag_version(client, name, version, tags)
    return decision


def _tag(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
