"""data_generation as Kedro runs it: the pipeline on an in-memory catalog, and the catalog's datasets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from alignops.pipelines.data_generation import create_pipeline
from alignops.world import GoldJudge

CONF = Path(__file__).resolve().parents[2] / "conf"
OUTPUTS = ("raw_preferences", "sft_demonstrations", "eval_prompts", "gold_judge_spec", "world_summary")


@pytest.fixture(scope="module")
def test_params() -> dict:
    return yaml.safe_load((CONF / "test" / "parameters_data_generation.yml").read_text())["world"]


@pytest.fixture(scope="module")
def outputs(test_params) -> dict:
    catalog = DataCatalog(
        {"params:world": MemoryDataset(test_params), **{name: MemoryDataset() for name in OUTPUTS}}
    )
    SequentialRunner().run(create_pipeline(), catalog)
    return {name: catalog.load(name) for name in OUTPUTS}


def test_pipeline_wires_params_to_the_contracted_outputs():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {"params:world"}
    assert pipeline.outputs() == set(OUTPUTS)


def test_rankings_have_the_contracted_shape(outputs, test_params):
    rankings = outputs["raw_preferences"]
    assert isinstance(rankings, list)
    assert len({r["item_id"] for r in rankings}) == test_params["n_ranking_items"]
    assert len(rankings) > test_params["n_ranking_items"]  # some items are labelled twice
    for r in rankings:
        assert set(r) == {"item_id", "prompt_id", "prompt", "responses", "ranks", "annotator_id"}
        assert len(r["responses"]) == len(r["ranks"]) == 4
        assert all(isinstance(x, int) for x in r["ranks"]) and min(r["ranks"]) == 1


def test_frames_have_the_contracted_columns(outputs, test_params):
    sft, held_out = outputs["sft_demonstrations"], outputs["eval_prompts"]
    assert list(sft.columns) == ["prompt_id", "intent", "prompt", "response"]
    assert list(held_out.columns) == ["prompt_id", "intent", "prompt", "should_refuse"]
    assert held_out["should_refuse"].dtype == bool and held_out["should_refuse"].any()  # the report's alignment tax
    assert len(sft) == test_params["n_sft_demos"]
    assert len(held_out) == test_params["n_eval_prompts"]
    assert not set(held_out["prompt"]) & set(sft["prompt"])


def test_gold_spec_and_summary(outputs, test_params):
    judge = GoldJudge.from_spec(outputs["gold_judge_spec"])
    sft = outputs["sft_demonstrations"]
    assert judge.score(sft["prompt"], sft["response"]).shape == (len(sft),)
    summary = outputs["world_summary"]
    assert summary["sizes"]["n_ranking_items"] == test_params["n_ranking_items"]
    assert summary["sizes"]["n_pairs"] > 0
    assert 0.0 <= summary["panel_gold_agreement"] <= 1.0
    for key in ("annotator_gold_agreement", "inter_annotator_agreement", "gold", "length_bias"):
        assert key in summary
    assert {"sft_demonstrations", "candidates", "best_of_k"} <= set(summary["gold"])


def test_catalog_round_trips_the_outputs(outputs, tmp_path):
    config = yaml.safe_load((CONF / "base" / "catalog_data_generation.yml").read_text())
    assert set(config) == set(OUTPUTS) - {"raw_preferences"}  # ingestion owns raw_preferences
    for entry in config.values():
        entry["filepath"] = str(tmp_path / entry["filepath"])
    catalog = DataCatalog.from_config(config)
    for name in config:
        catalog.save(name, outputs[name])
        loaded = catalog.load(name)
        if isinstance(loaded, pd.DataFrame):
            pd.testing.assert_frame_equal(loaded, outputs[name], check_dtype=False)
        else:
            assert loaded == outputs[name]
