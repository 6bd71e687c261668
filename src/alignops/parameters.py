"""Every parameter block's config dataclass, and the check that builds them before a run starts.

Each block of ``conf/*/parameters_*.yml`` is one frozen dataclass, built by its node with
``Config(**params)``: a misspelt key is a ``TypeError``, an impossible value a
``ValueError`` from ``__post_init__``. Left to the nodes, either surfaces only when its
node starts, perhaps an hour into training. ``check_parameters`` builds every block a
run reads before its first node (the tracking hook calls it), so the run fails in its
first seconds, naming the block and the key.

Adding a block is one line: in ``PARAMETER_CONFIGS`` if a dataclass reads it, else in
``WITHOUT_CONFIG`` (``tests/test_config.py`` checks that every block is in one of them).
Config classes are named by import path, not imported here: most of their modules pull
in torch, and the hook that imports this module runs for every ``kedro`` command.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

PARAMETER_CONFIGS: dict[str, tuple[str, str]] = {
    "world": ("data_generation", "alignops.world:WorldConfig"),
    "sources": ("sources", "alignops.preferences.sources:SourcesConfig"),
    "data_validation": ("data_validation", "alignops.preferences.validation:DataValidationConfig"),
    "data_split": ("data_split", "alignops.preferences.split:SplitConfig"),
    "data_report": ("data_report", "alignops.preferences.report:ReportConfig"),
    "model": ("model", "alignops.models:ModelConfig"),
    "generation": ("generation", "alignops.models:GenerationConfig"),
    "sft": ("sft", "alignops.training.sft_config:SFTConfig"),
    "reward": ("reward", "alignops.training.reward_config:RewardConfig"),
    "audit_judge": ("audit_judge", "alignops.training.audit_judge_config:AuditJudgeConfig"),
    "ppo": ("ppo", "alignops.training.ppo_config:PPOConfig"),
    "dpo": ("dpo", "alignops.training.dpo_config:DPOConfig"),
    "evaluation": ("evaluation", "alignops.evaluation:EvaluationConfig"),
    "report": ("report", "alignops.evaluation.frontier:ReportConfig"),
    "registry": ("registry", "alignops.tracking.registry:RegistryConfig"),
}
"""Parameter block -> (the ``parameters_<file>.yml`` it lives in, ``module:Class`` of the
dataclass its node builds from it)."""

WITHOUT_CONFIG: dict[str, str] = {
    "data_validation_suite": "data_validation",  # a list of expectations, parsed by parse_suite
    "tracking": "tracking",  # read by the tracking hook, not by a node
}
"""Blocks that are not one dataclass's fields, and their files."""

_UNEXPECTED = re.compile(r"^(?:(\w+)\.)?__init__\(\) got an unexpected keyword argument '(\w+)'")
_MISSING = re.compile(r"^(?:(\w+)\.)?__init__\(\) missing \d+ required (?:positional|keyword-only) arguments?: (.+)$")


class ParameterError(ValueError):
    """A parameter block its config dataclass refuses: an unknown or missing key, an impossible value."""


def config_class(block: str) -> type:
    """The dataclass that ``block``'s node builds (imported now, so only when needed)."""
    module, name = PARAMETER_CONFIGS[block][1].split(":")
    return getattr(importlib.import_module(module), name)


def parameter_blocks(dataset_names: Iterable[str]) -> set[str] | None:
    """The top-level parameter blocks that nodes reading ``dataset_names`` are given:
    ``params:sft`` and ``params:sft.learning_rate`` both read ``sft``; None when a node
    reads the whole ``parameters`` dictionary, so every block counts."""
    blocks = set()
    for name in dataset_names:
        if name == "parameters":
            return None
        if name.startswith("params:"):
            blocks.add(name.removeprefix("params:").split(".")[0])
    return blocks


def check_parameters(params: Mapping[str, Any], blocks: Iterable[str] | None = None) -> None:
    """Build the config of each of ``blocks`` (every block with a config when None) from
    ``params``, as its node will; raise one ``ParameterError`` listing every problem.

    Blocks without a config (``WITHOUT_CONFIG``, or ones this module does not know) pass.
    """
    problems = misspelt_blocks(params)
    checked = set(PARAMETER_CONFIGS if blocks is None else set(blocks) & PARAMETER_CONFIGS.keys())
    for block in sorted(checked):
        problem = _block_problem(block, params.get(block))
        if problem:
            problems.append(f"parameters {block!r}: {problem}")
    if not problems:  # the blocks build one by one; now what they must agree on
        problems = [problem for needs, rule in RELATIONS if needs <= checked and (problem := rule(params))]
    if problems:
        raise ParameterError("\n".join(problems))


def misspelt_blocks(params: Mapping[str, Any]) -> list[str]:
    """A top-level block no stage reads whose name is close to one a stage does read: a typo
    (``--params regsitry.margin=0.1``) that would otherwise be ignored without a word. A
    block of the user's own with a distinct name passes."""
    known = [*PARAMETER_CONFIGS, *WITHOUT_CONFIG]
    problems = []
    for name in params:
        if name not in known and (close := difflib.get_close_matches(name, known, n=1, cutoff=0.8)):
            problems.append(f"parameters {name!r}: no stage reads this block (did you mean {close[0]!r}?)")
    return problems


def _audit_split_to_train_on(params: Mapping[str, Any]) -> str | None:
    judge, split = params["audit_judge"], params["data_split"]
    if judge.get("train", True) and not split.get("audit_fraction", 0.2) > 0:
        return (
            "parameters 'audit_judge' and 'data_split': audit_judge.train is true but data_split.audit_fraction "
            "is 0, so the audit judge has no pairs to learn from; give the audit split a share or judge with a "
            "pretrained classifier (audit_judge.train: false, audit_judge.base: <path>)"
        )
    return None


def _samples_the_reward_models_can_score(params: Mapping[str, Any]) -> str | None:
    limit = params["model"].get("max_response_tokens", 160)
    wanted = params["generation"].get("max_new_tokens", 160)
    if wanted > limit:
        return (
            f"parameters 'generation' and 'model': generation.max_new_tokens ({wanted}) is above "
            f"model.max_response_tokens ({limit}): replies would be sampled longer than SFT learnt to end "
            "them and the reward models and judges would score them cut"
        )
    return None


RELATIONS = (
    ({"audit_judge", "data_split"}, _audit_split_to_train_on),
    ({"generation", "model"}, _samples_the_reward_models_can_score),
)
"""Rules across blocks: (the blocks a rule reads, the rule), checked when the run reads them all."""


def _block_problem(block: str, value: Any) -> str | None:
    """What is wrong with ``block``'s parameters, or None if its config builds."""
    file = f"conf/base/parameters_{PARAMETER_CONFIGS[block][0]}.yml"
    if value is None:
        return f"missing (it is set in {file})"
    if not isinstance(value, Mapping):
        return f"expected the keys of {file}, got {value!r}"
    cls = config_class(block)
    # Every unknown top-level key at once, each with a suggestion, and then what the config
    # says of the keys it knows; unknown keys of nested dataclasses come from the TypeError.
    names = [field.name for field in dataclasses.fields(cls)]
    problems = [f"unknown key {key!r}{_suggestion(key, names)}" for key in value if key not in names]
    try:
        cls(**{key: item for key, item in value.items() if key in names})
    except TypeError as error:
        problems.append(_type_error(cls, str(error)))
    except ValueError as error:
        problems.append(str(error))
    return "; ".join(problems) or None


def _type_error(cls: type, message: str) -> str:
    """``message`` of a dataclass's ``TypeError`` said as a key problem, where it is one."""
    if match := _UNEXPECTED.match(message):
        owner, key = match.groups()
        fields = _fields_of(cls, owner)
        where = f" in {owner}" if owner and owner != cls.__name__ else ""
        return f"unknown key {key!r}{where}{_suggestion(key, fields)}"
    if match := _MISSING.match(message):
        owner, keys = match.groups()
        where = f" in {owner}" if owner and owner != cls.__name__ else ""
        return f"missing key{'s' if ',' in keys or ' and ' in keys else ''} {keys}{where}"
    return message


def _fields_of(cls: type, owner: str | None) -> list[str]:
    """Field names of ``owner``: ``cls`` itself, or a nested dataclass defined beside it."""
    if owner is None or owner == cls.__name__:
        target = cls
    else:
        target = getattr(importlib.import_module(cls.__module__), owner, None)
    return [field.name for field in dataclasses.fields(target)] if dataclasses.is_dataclass(target) else []


def _suggestion(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
