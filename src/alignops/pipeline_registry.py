"""Project pipelines: every stage by name, and the whole journey wired for the run's data source."""

from __future__ import annotations

from kedro.framework.project import pipelines
from kedro.pipeline import Pipeline

from alignops.pipelines import (
    audit_judge,
    data_generation,
    data_report,
    data_validation,
    dpo,
    evaluation,
    ingestion,
    ppo,
    registry,
    reward,
    sft,
    sources,
)
from alignops.preferences.sources import SourcesConfig

# Listed, not discovered: Kedro 1.7's find_pipelines only imports the names a run asks
# for, so the compositions below ("data", "__default__") could not be assembled from it.
STAGES = {
    "data_generation": data_generation.create_pipeline,
    "ingestion": ingestion.create_pipeline,
    "data_validation": data_validation.create_pipeline,
    "data_report": data_report.create_pipeline,
    "sources": sources.create_pipeline,
    "sft": sft.create_pipeline,
    "reward": reward.create_pipeline,
    "audit_judge": audit_judge.create_pipeline,
    "ppo": ppo.create_pipeline,
    "dpo": dpo.create_pipeline,
    "evaluation": evaluation.create_pipeline,
    "registry": registry.create_pipeline,
}
DATA_STAGES = ("ingestion", "data_validation", "data_report")
TRAINING_STAGES = ("sft", "reward", "audit_judge", "ppo", "dpo")

_sources = SourcesConfig()
"""The run's ``params:sources``, set by the project hook once the run's configuration is
known (``use_sources``); the embedded world until then, e.g. for ``kedro registry list``."""


def use_sources(params: dict | None) -> None:
    """Wire ``__default__`` for ``params`` (the run's ``sources`` block) from now on.

    Called by the project hook in ``after_context_created``, before Kedro looks the run's
    pipelines up, so ``kedro run --env hh_rlhf`` runs the journey on that environment's
    files with no ``--pipelines`` to remember. Kedro caches the registry: a change of
    sources drops the cache.
    """
    global _sources
    config = SourcesConfig(**(params or {}))
    if config != _sources:
        _sources = config
        pipelines.configure(__name__)  # this module: kedro's PACKAGE_NAME may not be set when it was imported


def register_pipelines() -> dict[str, Pipeline]:
    """Every stage by its folder name, plus two compositions.

    ``data`` prepares a user's preference files (ingestion, validation, report) without
    any training. ``__default__`` is the whole journey for the run's ``sources``: on the
    embedded world, its generator, the gold judge and everything after; on a user's
    files (``sources.kind: files``), the ``sources`` stage in the generator's place
    (demonstrations and evaluation prompts from their data) and the audit judge as the
    judge. Nothing of the world is in a ``files`` run, so a world run's leftovers in
    ``data/`` cannot be read by it.
    """
    config, gold = _sources, _sources.uses_world
    options = {
        "sources": {"sft": config.sft, "eval_prompts": config.eval_prompts},
        "evaluation": {"gold_judge": gold},
        "registry": {"gold_judge": gold},
    }
    stages = {name: create(**options.get(name, {})) for name, create in STAGES.items()}
    journey = ["data_generation" if gold else "sources", *DATA_STAGES, *TRAINING_STAGES, "evaluation", "registry"]
    result = dict(stages)
    result["data"] = sum((stages[name] for name in DATA_STAGES), Pipeline([]))
    result["__default__"] = sum((stages[name] for name in journey), Pipeline([]))
    return result
