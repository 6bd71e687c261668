"""Project pipelines: every stage by name, and the whole journey wired for the run's data source."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping

from kedro.framework.project import pipelines
from kedro.pipeline import Pipeline

from alignops.preferences.sources import SourcesConfig

# Listed, not discovered: Kedro 1.7's find_pipelines only imports the names a run asks
# for, so the compositions below ("data", "__default__") could not be assembled from it.
# Each is the folder of alignops.pipelines whose create_pipeline builds it, imported only
# when the stage is asked for: a run of one stage (what every DVC stage is) does not pay
# for importing every other stage's libraries (Great Expectations, transformers, torch).
STAGES = (
    "data_generation",
    "ingestion",
    "data_validation",
    "data_report",
    "sources",
    "sft",
    "reward",
    "audit_judge",
    "ppo",
    "dpo",
    "evaluation",
    "report",
    "registry",
)
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


def journey() -> list[str]:
    """The stages of ``__default__`` for the run's ``sources``, in the order they run."""
    start = "data_generation" if _sources.uses_world else "sources"
    return [start, *DATA_STAGES, *TRAINING_STAGES, "evaluation", "report", "registry"]


def create_stage(name: str, **options) -> Pipeline:
    """The pipeline of stage ``name``, its module imported now."""
    if name not in STAGES:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(STAGES)}")
    return importlib.import_module(f"alignops.pipelines.{name}").create_pipeline(**options)


class LazyPipelines(Mapping):
    """Pipelines by name, each built (and its modules imported) on first use."""

    def __init__(self, builders: dict[str, Callable[[], Pipeline]]) -> None:
        self._builders = builders
        self._built: dict[str, Pipeline] = {}

    def __getitem__(self, name: str) -> Pipeline:
        if name not in self._built:
            self._built[name] = self._builders[name]()
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


def register_pipelines() -> Mapping[str, Pipeline]:
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
        "report": {"gold_judge": gold},
        "registry": {"gold_judge": gold},
    }
    result: LazyPipelines

    def stage(name: str) -> Callable[[], Pipeline]:
        return lambda: create_stage(name, **options.get(name, {}))

    def union(names: list[str] | tuple[str, ...]) -> Callable[[], Pipeline]:
        return lambda: sum((result[name] for name in names), Pipeline([]))

    builders = {name: stage(name) for name in STAGES}
    builders["data"] = union(DATA_STAGES)
    builders["__default__"] = union(journey())
    result = LazyPipelines(builders)
    return result
