"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from alignops.pipelines import (
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
)

# Listed, not discovered: Kedro 1.7's find_pipelines only imports the names a run asks
# for, so the compositions below ("data", "__default__") could not be assembled from it.
STAGES = {
    "data_generation": data_generation.create_pipeline,
    "ingestion": ingestion.create_pipeline,
    "data_validation": data_validation.create_pipeline,
    "data_report": data_report.create_pipeline,
    "sft": sft.create_pipeline,
    "reward": reward.create_pipeline,
    "ppo": ppo.create_pipeline,
    "dpo": dpo.create_pipeline,
    "evaluation": evaluation.create_pipeline,
    "registry": registry.create_pipeline,
}


DATA_STAGES = ("ingestion", "data_validation", "data_report")


def register_pipelines() -> dict[str, Pipeline]:
    """Every stage by its folder name, plus two compositions.

    ``data`` prepares a user's own preference files (ingestion, validation, report)
    without the embedded world's generator or any training; ``__default__`` runs the
    whole journey on the embedded world.
    """
    pipelines = {name: create() for name, create in STAGES.items()}
    pipelines["data"] = sum((pipelines[name] for name in DATA_STAGES), Pipeline([]))
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
