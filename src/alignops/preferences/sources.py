"""Where a run's SFT demonstrations and evaluation prompts come from.

On the embedded world (``sources.kind: world``) the simulated desk writes both, and
its gold judge scores the policies. On a user's own data (``kind: files``) nothing
of the world is read: SFT learns from the user's demonstrations file or from the
``chosen`` responses of the preference training split (the common practice for
HH-RLHF), and the policies answer the distinct prompts of the held-out split (or a
prompts file). ``pipeline_registry`` wires the DAG from this configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from alignops.preferences.formats import HH_ASSISTANT, ROLE_LABELS

KINDS = ("world", "files")
SFT_SOURCES = ("demonstrations", "chosen")
EVAL_SOURCES = ("heldout", "file")
DEMONSTRATION_COLUMNS = ["prompt_id", "prompt", "response"]
EVAL_COLUMNS = ["prompt_id", "prompt"]


@dataclass(frozen=True)
class SourcesConfig:
    kind: str = "world"
    """``world``: the embedded simulated desk makes the preferences, demonstrations,
    evaluation prompts and a gold judge. ``files``: the user's files in the catalog
    (``raw_preferences``, and ``raw_demonstrations`` / ``raw_eval_prompts`` when the two
    settings below ask for them); the judge is the audit judge."""
    sft: str = "chosen"
    """``files`` only. ``chosen``: SFT on the chosen responses of ``preferences_train``;
    ``demonstrations``: SFT on the ``raw_demonstrations`` file (``prompt``/``response``
    records, or conversational ``messages`` ending with the assistant's reply)."""
    eval_prompts: str = "heldout"
    """``files`` only. ``heldout``: the distinct prompts of ``preferences_heldout``, which no
    training stage saw; ``file``: the ``raw_eval_prompts`` file (a ``prompt`` column)."""
    max_eval_prompts: int | None = None
    """Evaluate on at most this many prompts (the first ones in a fixed hashed order);
    null keeps all. Every policy answers the same ones."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"sources.kind must be one of {KINDS}, got {self.kind!r}")
        if self.sft not in SFT_SOURCES:
            raise ValueError(f"sources.sft must be one of {SFT_SOURCES}, got {self.sft!r}")
        if self.eval_prompts not in EVAL_SOURCES:
            raise ValueError(f"sources.eval_prompts must be one of {EVAL_SOURCES}, got {self.eval_prompts!r}")
        if self.max_eval_prompts is not None and self.max_eval_prompts < 1:
            raise ValueError(f"sources.max_eval_prompts must be >= 1 or null, got {self.max_eval_prompts}")

    @property
    def uses_world(self) -> bool:
        return self.kind == "world"


def _prompt_ids(prompts: pd.Series) -> pd.Series:
    """Stable ids from the prompt text (the same prompt gets the same id in every run)."""
    hashes = pd.util.hash_pandas_object(prompts.astype("string"), index=False)
    return hashes.map(lambda h: f"p{h:016x}").astype("string")


def demonstrations_from_chosen(preferences_train: pd.DataFrame) -> pd.DataFrame:
    """One demonstration per distinct (prompt, chosen response) of the training split."""
    pairs = preferences_train[["prompt", "chosen"]].astype("string").drop_duplicates()
    pairs = pairs.rename(columns={"chosen": "response"}).reset_index(drop=True)
    if pairs.empty:
        raise ValueError("sources.sft is 'chosen' but preferences_train has no rows")
    return pairs.assign(prompt_id=_prompt_ids(pairs["prompt"]))[DEMONSTRATION_COLUMNS]


def _render_context(messages: list[dict]) -> str:
    """Messages before the reply as the canonical HH-style transcript, ending with the
    assistant turn to answer (the shape every preference prompt has)."""
    return "".join(f"\n\n{ROLE_LABELS[m['role']]}: {m['content']}" for m in messages) + HH_ASSISTANT


def read_demonstrations(raw: pd.DataFrame, source: str = "raw_demonstrations") -> pd.DataFrame:
    """A user's demonstrations as (prompt_id, prompt, response) rows.

    ``prompt``/``response`` records keep their text; conversational ``messages``
    records become the canonical transcript of every message before the last, which
    must be the assistant's reply. A bad record names its 1-based line.
    """
    if {"prompt", "response"} <= set(raw.columns):
        frame = raw[["prompt", "response"]]
        bad = frame.isna().any(axis=1) | ~frame.map(lambda v: isinstance(v, str)).all(axis=1)
        if bad.any():
            line = int(bad.to_numpy().argmax()) + 1
            raise ValueError(f"{source} line {line}: 'prompt' and 'response' must both be text")
        out = frame.astype("string").reset_index(drop=True)
    elif "messages" in raw.columns:
        rows = []
        for line, messages in enumerate(raw["messages"], start=1):  # read once, not a hot path
            if not isinstance(messages, list) or len(messages) < 2:
                raise ValueError(f"{source} line {line}: 'messages' must be a list of at least two messages")
            if any(not isinstance(m, dict) or m.get("role") not in ROLE_LABELS for m in messages):
                raise ValueError(f"{source} line {line}: every message needs a role in {sorted(ROLE_LABELS)}")
            if messages[-1]["role"] != "assistant":
                raise ValueError(f"{source} line {line}: the last message must be the assistant's reply")
            rows.append((_render_context(messages[:-1]), str(messages[-1]["content"])))
        out = pd.DataFrame(rows, columns=["prompt", "response"], dtype="string")
    else:
        raise ValueError(f"{source}: expected 'prompt' and 'response' columns, or 'messages'; got {list(raw.columns)}")
    if out.empty:
        raise ValueError(f"{source} has no demonstrations")
    return out.assign(prompt_id=_prompt_ids(out["prompt"]))[DEMONSTRATION_COLUMNS]


def without_prompts(frame: pd.DataFrame, *parts: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``frame``'s rows whose ``prompt`` is in none of ``parts`` (split tables), and how many were
    dropped: a user's own demonstrations or evaluation prompts must not reach across the split
    (SFT and PPO learning held-out prompts, policies evaluated on prompts they trained on)."""
    taken = set().union(*(set(part["prompt"].astype(str)) for part in parts))
    keep = ~frame["prompt"].astype(str).isin(taken)
    return frame.loc[keep].reset_index(drop=True), int((~keep).sum())


def select_eval_prompts(prompts: pd.Series, config: SourcesConfig) -> pd.DataFrame:
    """The distinct ``prompts``, at most ``config.max_eval_prompts`` of them in a hashed order
    that does not depend on the file's row order."""
    distinct = prompts.astype("string").drop_duplicates().reset_index(drop=True)
    if distinct.empty:
        raise ValueError("no evaluation prompts: the held-out split (or prompts file) is empty")
    frame = pd.DataFrame({"prompt_id": _prompt_ids(distinct), "prompt": distinct})
    frame = frame.sort_values("prompt_id", kind="stable").reset_index(drop=True)
    if config.max_eval_prompts is not None:
        frame = frame.head(config.max_eval_prompts)
    return frame[EVAL_COLUMNS]
