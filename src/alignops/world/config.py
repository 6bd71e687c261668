"""Configuration of the embedded world: sizes, response mixtures and the annotator panel.

Built from ``conf/base/parameters_data_generation.yml`` (key ``world``) with
``WorldConfig(**params)``; nested blocks are turned into their dataclasses here, so
a misspelt key anywhere fails loudly instead of silently taking a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alignops.world.lexicon import FILLERS

BODIES = ("specific", "no_slot", "generic", "off_topic", "refusal", "unsafe")
TONES = ("polite", "neutral", "curt", "rude")
DEGENERATE = ("none", "repetition", "near_empty")


def _probabilities(name: str, table: Mapping[str, float], allowed: Sequence[str]) -> dict:
    unknown = set(table) - set(allowed)
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}; allowed: {list(allowed)}")
    if any(p < 0 for p in table.values()) or sum(table.values()) <= 0:
        raise ValueError(f"{name}: weights must be non-negative with a positive sum, got {table}")
    return {key: float(p) for key, p in table.items()}


@dataclass(frozen=True)
class ResponseMix:
    """How replies are composed: a probability table per component (normalised when sampled)."""

    bodies: Mapping[str, float]
    """What the reply does: ``specific`` (the intent's action, naming the prompt's slot),
    ``no_slot`` (the action without naming it), ``generic`` (vague advice), ``off_topic``
    (another intent's action), ``refusal`` (a blanket refusal), ``unsafe`` (asks for a
    password, ... or, on a should-refuse request, complies with it)."""
    tones: Mapping[str, float]
    """Framing: ``polite`` (greeting and closing), ``neutral``, ``curt`` (one rude remark), ``rude`` (two)."""
    detail: float
    """Probability that a specific/no_slot reply adds the intent's extra useful fact."""
    filler: Sequence[float]
    """Probabilities of 0, 1, 2, ... padding sentences (``lexicon.FILLERS``); each adds ~10 words."""
    degenerate: Mapping[str, float]
    """``none``, ``repetition`` (a phrase looped 3-5 times) or ``near_empty`` ("ok.")."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bodies", _probabilities("bodies", self.bodies, BODIES))
        object.__setattr__(self, "tones", _probabilities("tones", self.tones, TONES))
        object.__setattr__(
            self, "degenerate", _probabilities("degenerate", self.degenerate, DEGENERATE)
        )
        object.__setattr__(self, "filler", tuple(float(p) for p in self.filler))
        if not 0.0 <= self.detail <= 1.0:
            raise ValueError(f"detail must be a probability, got {self.detail}")
        if not self.filler or any(p < 0 for p in self.filler) or sum(self.filler) <= 0:
            raise ValueError(f"filler must be non-negative weights with a positive sum: {self.filler}")
        if len(self.filler) > len(FILLERS) + 1:  # fillers are drawn without repeats
            raise ValueError(f"at most {len(FILLERS)} filler sentences exist; got {len(self.filler) - 1}")


@dataclass(frozen=True)
class AnnotatorProfile:
    """One simulated rater: weights on what they perceive, and how noisy they are.

    Perceived utility = helpfulness * help + politeness * tone - harm * unsafe
    + length * words / 50 - repetition * looped + Gumbel(noise); sorting it gives a
    Plackett-Luce ranking. Helpfulness is in [0, 1.2], tone in [-1, 1].
    """

    annotator_id: str
    """Written to every ranking this rater makes."""
    helpfulness: float
    """Weight on whether the reply solves *this* prompt's problem."""
    politeness: float
    """Weight on tone (polite +1, neutral 0, curt -0.5, rude -1)."""
    harm: float
    """Penalty for unsafe advice or complying with a should-refuse request."""
    length: float
    """Weight per 50 words. Positive means "longer looks more thorough": the bias a reward
    model inherits and the gold judge does not share beyond its ideal band."""
    repetition: float
    """Penalty for looped text."""
    noise: float
    """Scale of the Gumbel noise on utility: larger is a lazier, less consistent rater."""
    tie_margin: float
    """Replies whose perceived utilities are closer than this share a rank."""

    def __post_init__(self) -> None:
        if self.noise < 0 or self.tie_margin < 0 or self.harm < 0:
            raise ValueError(f"{self.annotator_id}: noise, tie_margin and harm must be >= 0")


def _default_panel() -> tuple[AnnotatorProfile, ...]:
    raw = (
        ("ann_careful", 3.0, 0.8, 4.0, 0.2, 2.0, 0.7, 0.05),
        ("ann_verbose", 2.5, 0.6, 3.0, 2.0, 1.0, 0.8, 0.05),
        ("ann_strict", 2.5, 2.0, 5.0, 0.3, 2.0, 0.75, 0.05),
        ("ann_lazy", 1.5, 0.4, 2.0, 0.8, 0.5, 1.5, 0.25),
        ("ann_concise", 3.0, 0.6, 4.0, -0.4, 2.0, 0.8, 0.05),
        ("ann_warm", 2.0, 1.5, 4.0, 0.8, 1.5, 0.85, 0.05),
    )
    return tuple(AnnotatorProfile(*row) for row in raw)


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    """Everything is a deterministic function of this seed and the sizes below."""
    n_ranking_items: int = 1500
    """Prompts with K candidate replies ranked by the panel (each gives up to K(K-1)/2 pairs).
    The reward model trains on ~70% of them (``data_split``: 10% held out, 20% for the
    audit judge), about the 1,080 it had before the audit split existed."""
    k: int = 4
    """Replies per ranking item (InstructGPT ranked K = 4..9)."""
    double_label_share: float = 0.2
    """Share of ranking items labelled by a second, different annotator (for agreement)."""
    n_sft_demos: int = 1200
    """(prompt, reply) demonstrations of middling quality for supervised fine-tuning."""
    n_eval_prompts: int = 300
    """Held-out prompts that share no text with any training prompt."""
    candidates: ResponseMix = field(default_factory=lambda: ResponseMix(
        bodies={"specific": 0.28, "no_slot": 0.15, "generic": 0.2, "off_topic": 0.18,
                "refusal": 0.09, "unsafe": 0.1},
        tones={"polite": 0.4, "neutral": 0.3, "curt": 0.15, "rude": 0.15},
        detail=0.4, filler=(0.45, 0.15, 0.15, 0.1, 0.08, 0.07),
        degenerate={"none": 0.86, "repetition": 0.07, "near_empty": 0.07},
    ))
    """Mixture the ranked candidates are drawn from: wide, degenerate replies included."""
    demonstrations: ResponseMix = field(default_factory=lambda: ResponseMix(
        bodies={"specific": 0.3, "no_slot": 0.25, "generic": 0.35, "off_topic": 0.1},
        tones={"polite": 0.25, "neutral": 0.5, "curt": 0.25},
        detail=0.2, filler=(0.5, 0.25, 0.15, 0.1),
        degenerate={"none": 1.0},
    ))
    """Mixture of the SFT demonstrations: middling, never degenerate or unsafe, but with the
    best components in its support so PPO/DPO can find them by re-weighting."""
    annotators: tuple[AnnotatorProfile, ...] = field(default_factory=_default_panel)
    """The panel; each item is labelled by one of them drawn uniformly."""

    def __post_init__(self) -> None:
        for name in ("candidates", "demonstrations"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, ResponseMix(**value))
        panel = tuple(
            a if isinstance(a, AnnotatorProfile) else AnnotatorProfile(**a) for a in self.annotators
        )
        object.__setattr__(self, "annotators", panel)
        ids = [a.annotator_id for a in panel]
        if len(set(ids)) != len(ids):
            raise ValueError(f"annotator ids must be unique, got {ids}")
        if len(panel) < 2 and self.double_label_share > 0:
            raise ValueError("double labelling needs at least two annotators")
        if self.k < 2:
            raise ValueError(f"k must be >= 2 to rank anything, got {self.k}")
        if min(self.n_ranking_items, self.n_sft_demos, self.n_eval_prompts) < 1:
            raise ValueError("n_ranking_items, n_sft_demos and n_eval_prompts must be >= 1")
        if not 0.0 <= self.double_label_share <= 1.0:
            raise ValueError(f"double_label_share must be in [0, 1], got {self.double_label_share}")
        if self.demonstrations.degenerate.get("none", 0.0) < sum(self.demonstrations.degenerate.values()):
            raise ValueError("demonstrations must not be degenerate: set degenerate to {none: 1.0}")
