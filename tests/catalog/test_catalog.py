"""The catalog as kedro-viz reads it: a layer on every dataset, layers in data/'s order, and
wrapped datasets that preview as they did before MlflowArtifactDataset wrapped them."""

from __future__ import annotations

import inspect
import re

import matplotlib.pyplot as plt
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import AbstractDataset, DataCatalog

from alignops.catalog.mlflow_artifact import MlflowArtifactDataset
from tests.helpers import REPO_ROOT

LAYERS = ["raw", "intermediate", "primary", "model_input", "models", "reporting"]
"""kedro-viz's layers, in data/'s order (01_raw, 02_intermediate, 03_primary, 05_model_input,
06_models, 08_reporting)."""
FOLDER_LAYERS = dict(zip(["01_raw", "02_intermediate", "03_primary", "05_model_input", "06_models", "08_reporting"],
                         LAYERS, strict=True))
LAYER_NOT_FOLDER = {"validation_report": "intermediate"}
"""A report the gate reads before the primary layer exists (see catalog_data_validation.yml)."""
IN_MEMORY = {"passing_preferences", "ppo_prompts"}
"""Hand-offs between two nodes of one stage, on purpose not in the catalog (no layer)."""


@pytest.fixture(scope="module")
def default_pipeline():
    from kedro.framework.project import configure_project, pipelines

    configure_project("alignops")
    return pipelines["__default__"]


def load_catalog(env: str) -> DataCatalog:
    from alignops.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(REPO_ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return DataCatalog.from_config(loader["catalog"])


def pipeline_datasets(pipeline) -> list[str]:
    return sorted(name for name in pipeline.datasets() if not name.startswith("params:") and name != "parameters")


def local_path(config: dict) -> str:
    inner = config.get("dataset", config)
    return inner.get("filepath") or inner.get("path")


@pytest.mark.parametrize("env", ["local", "test", "hh_rlhf"])
def test_every_dataset_of_the_default_pipeline_has_the_layer_of_its_folder(env, default_pipeline):
    catalog = load_catalog(env)
    resolved = {name: catalog.config_resolver.resolve_pattern(name) for name in pipeline_datasets(default_pipeline)}
    # the runtime default pattern (MemoryDataset) answers for names no entry or factory declares
    in_memory = {name for name, config in resolved.items() if "MemoryDataset" in config["type"]}
    assert in_memory == IN_MEMORY, "a pipeline output with no catalog entry is lost after the run"
    for name in sorted(set(resolved) - IN_MEMORY):
        dataset = catalog.get(name)  # what kedro-viz reads the layer from: the instance's metadata
        layer = (dataset.metadata or {}).get("kedro-viz", {}).get("layer")
        folder = re.match(r"data/(\d\d_\w+)/", local_path(resolved[name]))
        if folder is None:  # a file of the user's own (conf/hh_rlhf)
            assert name == "raw_preferences" and layer == "raw", name
            continue
        assert layer == LAYER_NOT_FOLDER.get(name, FOLDER_LAYERS[folder.group(1)]), name


def test_stage_factories_give_every_stage_one_layout():
    catalog = load_catalog("local")
    for stage in ("sft", "reward", "ppo", "dpo"):
        assert local_path(catalog.config_resolver.resolve_pattern(f"{stage}_history")) == \
            f"data/08_reporting/{stage}_history.json"
        assert local_path(catalog.config_resolver.resolve_pattern(f"{stage}_curves")) == \
            f"data/08_reporting/curves/{stage}.png"
        assert local_path(catalog.config_resolver.resolve_pattern(f"{stage}_checkpoints")) == \
            f"data/06_models/checkpoints/{stage}"
        model = catalog.config_resolver.resolve_pattern(f"{stage}_model")
        assert local_path(model) == f"data/06_models/{stage}"
        assert model["type"].endswith("RewardModelDataset" if stage == "reward" else "HFModelDataset")


def test_kedro_viz_draws_the_default_pipeline_in_data_layers(default_pipeline):
    from kedro_viz.data_access.managers import DataAccessManager
    from kedro_viz.server import populate_data

    manager = DataAccessManager()
    populate_data(manager, load_catalog("local"), {"__default__": default_pipeline}, {})
    # an empty list would mean kedro-viz found a cycle among the layers and draws none
    assert manager.get_sorted_layers_for_registered_pipeline("__default__") == LAYERS


def figure():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [2.0, 1.0, 0.5])
    return fig


def viz_preview(dataset: AbstractDataset) -> tuple[object, str]:
    """What kedro-viz shows for a dataset: its preview and the preview's type name."""
    from kedro_viz.models.flowchart.node_metadata import DataNodeMetadata
    from kedro_viz.models.flowchart.nodes import GraphNode

    node = GraphNode.create_data_node(
        dataset_id="id", dataset_name="name", layer=None, tags=set(), dataset=dataset, modular_pipelines=set()
    )
    shown = DataNodeMetadata(data_node=node)
    return shown.preview, shown.preview_type


@pytest.mark.parametrize(
    ("config", "data"),
    [
        ({"type": "matplotlib.MatplotlibDataset", "save_args": {"format": "png"}}, figure),
        ({"type": "json.JSONDataset"}, lambda: {"policies": {"ppo": {"gold_win_rate_vs_sft": 0.61}}}),
    ],
    ids=["png", "json"],
)
def test_a_wrapped_dataset_previews_like_the_unwrapped_one(tmp_path, monkeypatch, config, data):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # no run: the wrapper only saves
    suffix = ".png" if "matplotlib" in config["type"] else ".json"
    path = tmp_path / f"out{suffix}"
    wrapped = MlflowArtifactDataset(dataset={**config, "filepath": str(path)}, artifact_path="reports")
    wrapped.save(data())
    plain = AbstractDataset.from_config("plain", {**config, "filepath": str(path)})

    preview, preview_type = viz_preview(wrapped)
    assert preview is not None and preview_type in {"ImagePreview", "JSONPreview"}
    assert (preview, preview_type) == viz_preview(plain)
    assert inspect.signature(wrapped.preview).return_annotation == inspect.signature(plain.preview).return_annotation


def test_kedro_viz_settings_pass_through_the_wrapper(tmp_path):
    wrapped = MlflowArtifactDataset(
        dataset={"type": "json.JSONDataset", "filepath": str(tmp_path / "r.json"),
                 "metadata": {"kedro-viz": {"preview": False}, "owner": "data"}},
        metadata={"kedro-viz": {"layer": "reporting"}},
    )
    assert wrapped.metadata == {"kedro-viz": {"preview": False, "layer": "reporting"}, "owner": "data"}
    wrapped.save({"a": 1})
    assert viz_preview(wrapped) == (None, None)  # `preview: false` on the wrapped entry still holds


def test_a_wrapped_dataset_without_a_preview_offers_none(tmp_path):
    docs = MlflowArtifactDataset(dataset={"type": "alignops.catalog.data_docs.DataDocsDataset", "path": str(tmp_path)})
    assert not hasattr(docs, "preview")
