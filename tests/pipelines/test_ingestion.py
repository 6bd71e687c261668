"""ingestion as Kedro runs it: the dataset, the pipeline on a catalog, and the catalog files."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, DatasetError, MemoryDataset
from kedro.runner import SequentialRunner

from alignops.catalog.preferences import PreferenceSourceDataset
from alignops.pipelines.ingestion import create_pipeline
from alignops.preferences.ingestion import (
    MAX_QUARANTINED_FRACTION,
    QUARANTINE_DTYPES,
    IngestionError,
    read_preferences,
)
from alignops.preferences.schema import CANONICAL_COLUMNS
from tests.data.fixtures_ingestion import KWISE, TRL_EXPLICIT, write_bytes, write_records
from tests.helpers import REPO_ROOT, run_kedro

CONF = Path(__file__).resolve().parents[2] / "conf"


# --- PreferenceSourceDataset -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["world.jsonl", "world.jsonl.gz"])
def test_dataset_save_load_round_trip(tmp_path, name):
    path = tmp_path / "raw" / name  # the folder does not exist yet
    dataset = PreferenceSourceDataset(filepath=str(path), format="kwise")
    assert not dataset.exists()
    records = [dict(r) for r in KWISE]
    records[0]["ranks"] = np.array([2, 3, 1])  # generators hand over numpy values
    records[1]["annotator_id"] = np.str_("ann-2")
    dataset.save(records)
    assert dataset.exists()
    expected = read_preferences(write_records(tmp_path / "expected.jsonl", KWISE))
    columns = ["prompt", "chosen", "rejected", "annotator_id", "chosen_rank", "rejected_rank", "margin"]
    pd.testing.assert_frame_equal(dataset.load().preferences[columns], expected[columns])
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as stream:
        assert json.loads(stream.readline())["ranks"] == [2, 3, 1]
    plain = tmp_path / "plain"
    plain.write_text("")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600


def test_dataset_saves_frames_and_gzip_bytes_are_stable(tmp_path):
    path = tmp_path / "prefs.jsonl.gz"
    dataset = PreferenceSourceDataset(filepath=str(path))
    dataset.save(pd.DataFrame(TRL_EXPLICIT))
    first = path.read_bytes()
    dataset.save(pd.DataFrame(TRL_EXPLICIT))
    assert path.read_bytes() == first  # DVC sees no change when nothing changed
    assert dataset.load().preferences["chosen"].tolist() == [r["chosen"] for r in TRL_EXPLICIT]
    assert [p.name for p in tmp_path.iterdir()] == ["prefs.jsonl.gz"]  # no staging file left behind


def test_read_only_dataset_refuses_to_overwrite(tmp_path):
    path = write_records(tmp_path / "user.jsonl", TRL_EXPLICIT)
    before = path.read_bytes()
    dataset = PreferenceSourceDataset(filepath=str(path), read_only=True)
    with pytest.raises(DatasetError, match="refusing to overwrite user data") as excinfo:
        dataset.save(TRL_EXPLICIT)
    assert "kedro run --pipelines data" in str(excinfo.value)
    assert path.read_bytes() == before
    assert len(dataset.load().preferences) == 3


def test_dataset_reads_globs_and_lists_and_describes_itself(tmp_path):
    write_records(tmp_path / "a.jsonl", TRL_EXPLICIT)
    write_records(tmp_path / "b.jsonl", TRL_EXPLICIT[:1])
    pattern = PreferenceSourceDataset(filepath=str(tmp_path / "*.jsonl"), format="trl_explicit")
    assert pattern.exists() and len(pattern.load().preferences) == 4
    assert "format='trl_explicit'" in str(pattern) and "read_only=False" in str(pattern)
    listed = PreferenceSourceDataset(filepath=[str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")])
    assert listed.load().preferences["source"].str.rsplit("/", n=1).str[-1].tolist() == ["b.jsonl"] + ["a.jsonl"] * 3
    with pytest.raises(DatasetError, match="one file"):
        listed.save(TRL_EXPLICIT)
    with pytest.raises(DatasetError, match="one file"):
        PreferenceSourceDataset(filepath=str(tmp_path / "*.jsonl")).save(TRL_EXPLICIT)
    assert not PreferenceSourceDataset(filepath=str(tmp_path / "*.csv")).exists()
    with pytest.raises(DatasetError, match="unknown preference format 'tsv'"):
        PreferenceSourceDataset(filepath="x.jsonl", format="tsv")
    with pytest.raises(DatasetError, match="max_quarantined_fraction must lie in"):
        PreferenceSourceDataset(filepath="x.jsonl", max_quarantined_fraction=5)


def test_dataset_load_error_keeps_the_ingestion_error(tmp_path):
    path = write_bytes(tmp_path / "bad.jsonl", b'{"prompt": "a", "chosen": 1, "rejected": "b"}\n')
    with pytest.raises(DatasetError, match="bad.jsonl line 1") as excinfo:
        PreferenceSourceDataset(filepath=str(path)).load()
    assert isinstance(excinfo.value.__cause__, IngestionError)


# --- the pipeline ------------------------------------------------------------------------------------


def test_pipeline_wires_raw_preferences_to_preferences_and_the_quarantine():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {"raw_preferences"}
    assert pipeline.outputs() == {"preferences", "ingestion_quarantine"}


def test_pipeline_on_a_small_kwise_file(tmp_path, caplog):
    source = write_records(tmp_path / "rankings.jsonl", KWISE)
    catalog = DataCatalog({
        "raw_preferences": PreferenceSourceDataset(filepath=str(source), format="kwise", read_only=True),
        "preferences": MemoryDataset(),
    })
    with caplog.at_level(logging.INFO, logger="alignops"):
        SequentialRunner().run(create_pipeline(), catalog)
    preferences = catalog.load("preferences")
    assert list(preferences.columns) == CANONICAL_COLUMNS
    assert len(preferences) == 8  # 3 + 5 ordered pairs; the all-tied ranking gives none
    assert set(preferences["source_format"]) == {"kwise"}
    assert (preferences["margin"] == preferences["rejected_rank"] - preferences["chosen_rank"]).all()
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Ingested"))
    assert "8 preference pairs" in summary and "kwise: 8" in summary and "2 tied" in summary


def test_pipeline_quarantines_malformed_records_with_file_line_and_reason(tmp_path, caplog):
    from kedro_datasets.pandas import JSONDataset

    records = [dict(TRL_EXPLICIT[i % 3]) for i in range(40)]
    records[6]["chosen"] = None
    records[21]["rejected"] = 3  # Arrow refuses the file for it: the slow reader sets it aside
    source = write_records(tmp_path / "user.jsonl", records)
    quarantine_path = tmp_path / "ingestion_quarantine.jsonl"
    lines = {"orient": "records", "lines": True}
    catalog = DataCatalog({
        "raw_preferences": PreferenceSourceDataset(filepath=str(source), read_only=True),
        "preferences": MemoryDataset(),
        "ingestion_quarantine": JSONDataset(filepath=str(quarantine_path), save_args=lines, load_args=lines),
    })
    with caplog.at_level(logging.INFO, logger="alignops"):
        SequentialRunner().run(create_pipeline(), catalog)
    preferences = catalog.load("preferences")
    assert len(preferences) == 38 and not {7, 22} & set(preferences["source_line"])
    quarantine = pd.read_json(quarantine_path, lines=True)
    assert list(quarantine.columns) == list(QUARANTINE_DTYPES)
    assert quarantine["source"].tolist() == [str(source)] * 2
    assert quarantine["source_line"].tolist() == [7, 22]
    assert quarantine["quarantine_reasons"].tolist() == [
        "'chosen' is missing or null", "'rejected' must be a string, got int",
    ]
    assert json.loads(quarantine["record"][1])["rejected"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Quarantined 2 malformed record(s) at ingestion from 1 file(s)" in w for w in warnings), warnings


def test_dataset_refuses_a_mostly_broken_file_unless_its_allowance_says_otherwise(tmp_path):
    records = [dict(TRL_EXPLICIT[0]) for _ in range(10)]
    records[3]["chosen"] = None  # one in ten: above the default 5%
    path = write_records(tmp_path / "user.jsonl", records)
    with pytest.raises(DatasetError, match="user.jsonl line 4: 'chosen' is missing or null .*1 of 10 records"):
        PreferenceSourceDataset(filepath=str(path)).load()
    loaded = PreferenceSourceDataset(filepath=str(path), max_quarantined_fraction=0.2).load()
    assert len(loaded.preferences) == 9 and loaded.quarantine["source_line"].tolist() == [4]


def test_world_rankings_go_through_the_dataset_into_the_canonical_table(tmp_path):
    """The contract with the embedded world: its list of rankings, saved and read back."""
    from alignops.pipelines.data_generation import create_pipeline as generation

    world = yaml.safe_load((CONF / "test" / "parameters_data_generation.yml").read_text())["world"]
    path = tmp_path / "world" / "preference_rankings.jsonl"
    raw = PreferenceSourceDataset(filepath=str(path), format="kwise")
    generated = generation().outputs() - {"raw_preferences"}
    catalog = DataCatalog({
        "params:world": MemoryDataset(world),
        "raw_preferences": raw,
        "preferences": MemoryDataset(),
        **{name: MemoryDataset() for name in generated},
    })
    SequentialRunner().run(generation() + create_pipeline(), catalog)
    preferences = catalog.load("preferences")
    rankings = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(preferences) > len(rankings) > 0
    assert set(preferences["item_id"]) == {str(r["item_id"]) for r in rankings}
    assert preferences["annotator_id"].notna().all()
    assert (preferences["chosen_rank"] < preferences["rejected_rank"]).all()


# --- catalog files -----------------------------------------------------------------------------------


def test_base_catalog_declares_the_ingestion_datasets():
    config = yaml.safe_load((CONF / "base" / "catalog_ingestion.yml").read_text())
    catalog = DataCatalog.from_config(config)
    raw = catalog.get("raw_preferences")
    assert isinstance(raw, PreferenceSourceDataset)
    assert raw._describe() == {
        "filepath": "data/01_raw/world/preference_rankings.jsonl", "format": "kwise", "read_only": False,
        "max_quarantined_fraction": MAX_QUARANTINED_FRACTION,
    }
    assert type(catalog.get("preferences")).__name__ == "ParquetDataset"
    assert config["ingestion_quarantine"]["filepath"] == "data/02_intermediate/ingestion_quarantine.jsonl"
    assert config["ingestion_quarantine"]["save_args"]["lines"] is True


def test_hh_rlhf_environment_reads_the_real_file_and_never_writes_it():
    config = yaml.safe_load((CONF / "hh_rlhf" / "catalog.yml").read_text())
    assert config["raw_preferences"]["filepath"] == "examples/hh_rlhf/harmless-base-sample.jsonl.gz"
    config["raw_preferences"]["filepath"] = str(REPO_ROOT / config["raw_preferences"]["filepath"])  # any cwd
    raw = DataCatalog.from_config(config).get("raw_preferences")
    table = raw.load().preferences
    # examples/hh_rlhf/README.md: its six malformed pairs are well-formed records, the validation gate's to catch
    assert len(table) == 405 and set(table["source_format"]) == {"hh_rlhf"}
    assert raw.load().quarantine.empty
    with pytest.raises(DatasetError, match="refusing to overwrite user data"):
        raw.save([{"chosen": "x", "rejected": "y"}])


@pytest.mark.slow
def test_kedro_run_of_the_ingestion_pipeline(project_copy):
    source = project_copy / "data" / "01_raw" / "world" / "preference_rankings.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    write_records(source, KWISE)
    run_kedro(project_copy, env="test", pipeline_names=["ingestion"])
    preferences = pd.read_parquet(project_copy / "data" / "02_intermediate" / "preferences.parquet")
    assert list(preferences.columns) == CANONICAL_COLUMNS
    assert len(preferences) == 8
    assert set(preferences["source"]) == {str(source)}  # Kedro anchors catalog paths at the project root
