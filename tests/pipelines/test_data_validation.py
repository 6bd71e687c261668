"""The data_validation pipeline: validate, save the report, then gate (in memory, in a session)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from alignops.pipelines.data_validation import create_pipeline
from alignops.preferences.validation import DataValidationError
from tests.data.helpers import BASE, ROWS, TEST_ENV, clean_frame
from tests.helpers import base_catalog, run_kedro


def _catalog(frame: pd.DataFrame, root: Path, **params) -> DataCatalog:
    """The project's catalog entries, rooted at ``root``; the input and parameters in memory."""
    catalog = base_catalog(root, "data_validation")
    catalog["preferences"] = MemoryDataset(frame)
    catalog["params:data_validation"] = MemoryDataset({**TEST_ENV["data_validation"], **params})
    catalog["params:data_validation_suite"] = MemoryDataset(BASE["data_validation_suite"])
    catalog["params:data_split"] = MemoryDataset({"heldout_fraction": 0.25, "audit_fraction": 0.25, "seed": 0})
    return catalog


def test_pipeline_wires_validate_then_gate_then_split():
    pipeline = create_pipeline()
    assert [n.name for n in pipeline.nodes] == ["validate_preferences", "gate_preferences", "split_preferences"]
    assert pipeline.inputs() == {
        "preferences",
        "params:data_validation",
        "params:data_validation_suite",
        "params:data_split",
    }
    assert pipeline.all_outputs() == {
        "validation_report",
        "validation_data_docs",
        "passing_preferences",
        "preferences_quarantine",
        "validated_preferences",
        "preferences_train",
        "preferences_heldout",
        "preferences_audit",
    }


def test_clean_data_passes_the_gate(tmp_path):
    catalog = _catalog(clean_frame(), tmp_path, mode="strict")
    SequentialRunner().run(create_pipeline(), catalog)
    pd.testing.assert_frame_equal(catalog.load("validated_preferences"), clean_frame())
    split = [len(catalog.load(f"preferences_{part}")) for part in ("train", "heldout", "audit")]
    assert sum(split) == len(clean_frame()) and min(split) > 0
    assert catalog.load("preferences_quarantine").empty
    assert catalog.load("validation_report")["success"]
    assert (tmp_path / "data/08_reporting/data_docs/index.html").exists()


def test_quarantine_passes_good_rows_on(tmp_path):
    frame = clean_frame()
    frame.loc[6, "chosen"] = ""
    catalog = _catalog(frame, tmp_path, mode="quarantine")
    SequentialRunner().run(create_pipeline(), catalog)
    validated, quarantine = (
        catalog.load("validated_preferences"),
        catalog.load("preferences_quarantine"),
    )
    assert len(validated) == ROWS - 1 and quarantine["source_line"].tolist() == [7]
    assert len(validated) + len(quarantine) == len(frame)


@pytest.mark.parametrize("mode", ["strict", "quarantine"])
def test_a_failed_gate_stops_the_run_and_leaves_the_report(tmp_path, mode):
    frame = clean_frame()
    frame.loc[[1, 2, 3], "prompt_consistent"] = False  # 7.5% bad: fails strict and quarantine
    catalog = _catalog(frame, tmp_path, mode=mode)
    with pytest.raises(DataValidationError, match=r"crafted\.jsonl:2 "):
        SequentialRunner().run(create_pipeline(), catalog)
    report = catalog.load("validation_report")
    assert (
        report["success"] is False
        and report["bad_rows"] == 3
        and report["reasons"] == {"prompt inconsistent": 3}
    )
    assert catalog.load("preferences_quarantine")["source_line"].tolist() == [2, 3, 4]
    assert (tmp_path / "data/08_reporting/data_docs/index.html").exists()
    assert not catalog.exists("validated_preferences")


@pytest.mark.slow
def test_kedro_session_writes_every_output_through_the_catalog(project_copy):
    frame = clean_frame()
    frame.loc[4, "rejected"] = frame.loc[4, "chosen"]
    catalog = yaml.safe_load((project_copy / "conf/base/catalog_ingestion.yml").read_text())
    frame.to_parquet(project_copy / catalog["preferences"]["filepath"])
    run_kedro(project_copy, env="test", pipeline_names=["data_validation"])

    data = project_copy / "data"
    report = json.loads((data / "08_reporting/validation_report.json").read_text())
    assert report["success"] and report["mode"] == "quarantine" and report["bad_rows"] == 1
    quarantine = pd.read_json(data / "02_intermediate/preferences_quarantine.jsonl", lines=True)
    assert quarantine[["source", "source_line", "quarantine_reasons"]].to_dict("records") == [
        {
            "source": "crafted.jsonl",
            "source_line": 5,
            "quarantine_reasons": "chosen equals rejected",
        }
    ]
    validated = pd.read_parquet(data / "03_primary/preferences.parquet")
    assert len(validated) + len(quarantine) == ROWS
    index = data / "08_reporting/data_docs/index.html"
    assert "preferences" in index.read_text()
