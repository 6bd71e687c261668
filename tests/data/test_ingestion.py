"""Ingestion: every source format into the canonical table, and precise errors for bad files."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignops.preferences.ingestion import (
    QUARANTINE_DTYPES,
    Ingested,
    IngestionError,
    ingestion_summary,
    read_preference_files,
    read_preferences,
    read_source,
    resolve_sources,
)
from alignops.preferences.record_checks import Violations
from alignops.preferences.schema import CANONICAL_DTYPES
from tests.data.fixtures_ingestion import (
    CONVERSATIONAL_EXPLICIT,
    CONVERSATIONAL_IMPLICIT,
    HH_RLHF,
    KWISE,
    TRL_EXPLICIT,
    jsonl_bytes,
    message,
    write_bytes,
    write_records,
)
from tests.helpers import REPO_ROOT

HH_SAMPLE = REPO_ROOT / "examples" / "hh_rlhf" / "harmless-base-sample.jsonl.gz"
ALL_CONTAINERS = [".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet"]
LIST_CONTAINERS = [".jsonl", ".jsonl.gz", ".json", ".parquet"]  # a CSV cell holds no lists


def first_lines(suffix: str, count: int) -> list[int]:
    """Where records sit: csv has its header on line 1; json arrays and parquet count records."""
    return list(range(2, count + 2)) if ".csv" in suffix else list(range(1, count + 1))


def assert_canonical(table: pd.DataFrame) -> None:
    assert list(table.columns) == list(CANONICAL_DTYPES)
    assert {c: str(t) for c, t in table.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in CANONICAL_DTYPES.items()
    }


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ALL_CONTAINERS)
def test_trl_explicit_in_every_container(tmp_path, suffix):
    path = write_records(tmp_path / f"prefs{suffix}", TRL_EXPLICIT)
    table = read_preferences(path)
    assert_canonical(table)
    assert table["prompt"].tolist() == [r["prompt"] for r in TRL_EXPLICIT]
    assert table["chosen"].tolist() == [r["chosen"] for r in TRL_EXPLICIT]
    assert table["rejected"].tolist() == [r["rejected"] for r in TRL_EXPLICIT]
    assert table["margin"].tolist() == [2.5, 1.0, 0.5]
    assert table["annotator_id"].tolist() == ["ann-1", "ann-2", "ann-1"]
    assert set(table["source_format"]) == {"trl_explicit"}
    assert set(table["source"]) == {str(path)}
    assert table["source_line"].tolist() == first_lines(suffix, 3)
    assert table["prompt_consistent"].all()
    assert table["chosen_rank"].isna().all() and table["item_id"].isna().all()


def test_jsonl_lines_count_blank_lines(tmp_path):
    rows = [json.dumps(r) for r in TRL_EXPLICIT]
    text = "\n".join(["", rows[0], "   ", "", rows[1], "\t", rows[2], "", ""])
    path = write_bytes(tmp_path / "gaps.jsonl.gz", text.encode())
    assert read_preferences(path)["source_line"].tolist() == [2, 5, 7]


def test_csv_keeps_text_that_looks_missing_and_lines_of_multiline_records(tmp_path):
    text = 'prompt,chosen,rejected,margin\n"two\nlines",NA,None,\n\nq,"",null,3\n'
    table = read_preferences(write_bytes(tmp_path / "prefs.csv", text.encode()))
    assert table["prompt"].tolist() == ["two\nlines", "q"]
    assert table["chosen"].tolist() == ["NA", ""]  # answers, not missing values
    assert table["rejected"].tolist() == ["None", "null"]
    assert table["margin"].isna().tolist() == [True, False]
    assert table["source_line"].tolist() == [2, 5]


@pytest.mark.parametrize("suffix", [".jsonl", ".json.gz", ".csv", ".parquet"])
def test_hh_rlhf_transcripts(tmp_path, suffix):
    table = read_preferences(write_records(tmp_path / f"hh{suffix}", HH_RLHF))
    assert set(table["source_format"]) == {"hh_rlhf"}
    assert table["prompt"][0] == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:"
    assert table["chosen"].tolist() == [" Gladly.", "", "Why did the chicken cross the road?"]
    assert table["rejected"].tolist() == ["No.", "Something.", "Water is wet."]
    assert table["prompt_consistent"].tolist() == [True, True, False]
    assert table["prompt"][2] == "\n\nHuman: Tell me a joke\n\nAssistant:"  # the chosen side's
    if ".csv" in suffix:  # quoted transcripts span lines: a record is named by the line it starts on
        spans = [1 + r["chosen"].count("\n") + r["rejected"].count("\n") for r in HH_RLHF]
        assert table["source_line"].tolist() == [2, 2 + spans[0], 2 + spans[0] + spans[1]]
    else:
        assert table["source_line"].tolist() == first_lines(suffix, 3)


@pytest.mark.parametrize("suffix", LIST_CONTAINERS)
def test_conversational_with_implicit_prompt(tmp_path, suffix):
    table = read_preferences(write_records(tmp_path / f"chat{suffix}", CONVERSATIONAL_IMPLICIT))
    assert set(table["source_format"]) == {"trl_conversational"}
    assert table["prompt"][0] == (
        "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Track my order?\n\nAssistant:"
    )
    assert table["chosen"].tolist() == ["Sure, what is the number?", "Of course."]
    assert table["rejected"].tolist() == ["No.", "Go away."]
    assert table["prompt"][1] == "\n\nHuman: Refund please\n\nAssistant:"
    assert table["prompt_consistent"].tolist() == [True, False]


def test_conversational_with_explicit_prompt(tmp_path):
    table = read_preferences(write_records(tmp_path / "chat.jsonl", CONVERSATIONAL_EXPLICIT))
    assert table.loc[0, ["prompt", "chosen", "rejected"]].tolist() == [
        "\n\nHuman: What is 2 + 2?\n\nAssistant:", "4", "5",
    ]
    assert bool(table.loc[0, "prompt_consistent"])


def test_conversational_renders_like_the_hh_transcript_it_came_from(tmp_path):
    hh = read_preferences(write_records(tmp_path / "hh.jsonl", HH_RLHF[:1]))
    chat = [message("user", "Hi"), message("assistant", "Hello."), message("user", "Help me?")]
    record = {"chosen": [*chat, message("assistant", "Gladly.")], "rejected": [*chat, message("assistant", "No.")]}
    conversational = read_preferences(write_records(tmp_path / "chat.jsonl", [record]))
    assert conversational.loc[0, "prompt"] == hh.loc[0, "prompt"]


@pytest.mark.parametrize("suffix", LIST_CONTAINERS)
def test_kwise_expands_to_every_strictly_ordered_pair(tmp_path, suffix):
    path = write_records(tmp_path / f"rankings{suffix}", KWISE)
    table = read_preferences(path)
    assert set(table["source_format"]) == {"kwise"}
    first = table[table["prompt"] == "Where is my parcel?"]
    assert list(zip(first["chosen"], first["rejected"], strict=True)) == [
        ("Tracking says Tuesday.", "It is on its way."),
        ("Tracking says Tuesday.", "Dunno."),
        ("It is on its way.", "Dunno."),
    ]
    assert first["chosen_rank"].tolist() == [1, 1, 2]
    assert first["rejected_rank"].tolist() == [2, 3, 3]
    assert first["margin"].tolist() == [1.0, 2.0, 1.0]
    assert set(first["item_id"]) == {"item-7"} and set(first["annotator_id"]) == {"ann-1"}
    second = table[table["prompt"] == "Cancel my plan"]
    assert len(second) == 5  # 4 responses: 6 pairs, one of them tied
    assert ("Done.", "Ok.") not in set(zip(second["chosen"], second["rejected"], strict=True))
    line = first_lines(suffix, 2)[1]
    assert set(second["item_id"]) == {f"{path}:{line}"}  # derived from file and line
    assert set(second["source_line"]) == {line}
    assert "Hello" not in set(table["prompt"])  # all tied: zero pairs
    assert len(table) == 8
    assert table.attrs["ties_dropped"] == 2
    assert (table["chosen_rank"] < table["rejected_rank"]).all()


def test_kwise_accepts_ranks_written_as_whole_floats(tmp_path):
    record = {"prompt": "p", "responses": ["a", "b"], "ranks": [2.0, 1.0]}
    table = read_preferences(write_records(tmp_path / "floats.jsonl", [record]))
    assert table.loc[0, ["chosen", "rejected", "chosen_rank"]].tolist() == ["b", "a", 1]


@pytest.mark.parametrize(
    ("records", "detected"),
    [(TRL_EXPLICIT, "trl_explicit"), (CONVERSATIONAL_IMPLICIT, "trl_conversational"),
     (CONVERSATIONAL_EXPLICIT, "trl_conversational"), (HH_RLHF, "hh_rlhf"), (KWISE, "kwise")],
)
def test_format_is_detected_from_columns_and_types(tmp_path, records, detected):
    table = read_preferences(write_records(tmp_path / "any.jsonl", records), fmt="auto")
    assert set(table["source_format"]) == {detected}


def test_explicit_format_overrides_detection(tmp_path):
    # HH transcripts that also carry a prompt column look like trl_explicit to detection
    records = [{**r, "prompt": "ignored"} for r in HH_RLHF]
    path = write_records(tmp_path / "hh_with_prompt.jsonl", records)
    assert set(read_preferences(path)["source_format"]) == {"trl_explicit"}
    table = read_preferences(path, fmt="hh_rlhf")
    assert set(table["source_format"]) == {"hh_rlhf"}
    assert table["prompt"].str.endswith("\n\nAssistant:").all()


def test_several_files_and_globs_make_one_table(tmp_path):
    write_records(tmp_path / "a.jsonl", TRL_EXPLICIT)
    write_records(tmp_path / "b.parquet", KWISE)
    write_records(tmp_path / "c.csv.gz", HH_RLHF)
    paths = resolve_sources([str(tmp_path / "*.jsonl"), tmp_path / "b.parquet", str(tmp_path / "c.*")])
    assert [p.name for p in paths] == ["a.jsonl", "b.parquet", "c.csv.gz"]
    summary = ingestion_summary(read_preference_files(paths))
    assert summary == {"rows": 14, "rows_per_format": {"kwise": 8, "trl_explicit": 3, "hh_rlhf": 3},
                       "sources": 3, "quarantined_records": 0, "ties_dropped": 2, "inconsistent_prompts": 1}


# --- the real HH-RLHF sample -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hh_table(hh_rlhf_file) -> pd.DataFrame:
    return read_preferences(hh_rlhf_file, fmt="hh_rlhf")


def test_real_hh_rlhf_file_gives_one_row_per_line(hh_table, hh_rlhf_file):
    assert_canonical(hh_table)
    assert len(hh_table) == 1800
    assert hh_table["source_line"].tolist() == list(range(1, 1801))
    assert set(hh_table["source_format"]) == {"hh_rlhf"}
    assert set(hh_table["source"]) == {str(hh_rlhf_file)}
    assert hh_table["prompt"].str.endswith("\n\nAssistant:").all()
    assert hh_table["prompt"].str.startswith("\n\nHuman:").all()


def test_real_hh_rlhf_flags_exactly_the_known_bad_rows(hh_table):
    inconsistent = hh_table.loc[~hh_table["prompt_consistent"], "source_line"].tolist()
    assert inconsistent == [1255, 1689]
    empty_chosen = hh_table.loc[hh_table["chosen"].str.strip() == "", "source_line"].tolist()
    assert empty_chosen == [87, 517, 926, 1104]


def test_real_hh_rlhf_is_detected_and_responses_follow_the_prompt(hh_table, hh_rlhf_file):
    raw = pd.read_json(hh_rlhf_file, lines=True)
    consistent = hh_table["prompt_consistent"].to_numpy()
    rebuilt = (hh_table["prompt"] + " " + hh_table["chosen"])[consistent]
    original = raw["chosen"][consistent]
    # the leading space goes; an empty response had none to lose
    assert ((rebuilt == original) | (rebuilt.str.rstrip(" ") == original)).all()
    auto = read_preferences(hh_rlhf_file)
    assert set(auto["source_format"]) == {"hh_rlhf"}


# --- bad input -------------------------------------------------------------------------------------


def assert_error(excinfo, path: Path, line: int | None, *fragments: str, unit: str = "line") -> None:
    """The message names the file, the line (or record) and the reason, as the user will read it."""
    message = str(excinfo.value)
    assert excinfo.value.path == str(path) and excinfo.value.line == line
    assert message.startswith(f"{path} {unit} {line}: " if line is not None else f"{path}: ")
    for fragment in fragments:
        assert fragment in message and fragment in excinfo.value.reason


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_broken_json_line_is_named(tmp_path, suffix):
    broken = b'{"prompt": "x", "chosen": "y", "rejected": \n'
    good = jsonl_bytes(TRL_EXPLICIT)
    path = write_bytes(tmp_path / f"broken{suffix}", good + broken + good)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 4, "invalid JSON")


def test_broken_json_array_is_named_by_line(tmp_path):
    text = b'[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": }\n]'
    path = write_bytes(tmp_path / "broken.json", text)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 3, "invalid JSON")


@pytest.mark.parametrize("fmt", ["auto", "kwise"])
def test_missing_column_names_columns_found_and_formats_considered(tmp_path, fmt):
    path = write_records(tmp_path / "missing.jsonl", [{"prompt": "p", "chosen": "c"}])
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path, fmt=fmt)
    assert_error(excinfo, path, 1, "missing required column", "found columns: prompt, chosen")
    considered = ["kwise"] if fmt == "kwise" else ["trl_explicit", "trl_conversational", "hh_rlhf", "kwise"]
    assert all(f"{f} needs" in excinfo.value.reason for f in considered)
    if fmt == "auto":
        assert "'rejected' for trl_explicit" in excinfo.value.reason



# --- bad rows are quarantined ----------------------------------------------------------------------

PADDING = 40
"""Good records after the bad one, so one bad record stays under MAX_QUARANTINED_FRACTION."""


def padded(records: list[dict], good: dict) -> list[dict]:
    """``records`` and copies of ``good`` after them (copies: a test may change any one record)."""
    return [*records, *(json.loads(json.dumps(good)) for _ in range(PADDING))]


def assert_quarantined(ingested: Ingested, path: Path, lines: list[int], *fragments: str) -> pd.DataFrame:
    """The bad records, and only they, are set aside with their file, line and reason."""
    quarantine = ingested.quarantine
    assert {c: str(t) for c, t in quarantine.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in QUARANTINE_DTYPES.items()
    }
    assert quarantine["source_line"].tolist() == lines
    assert set(quarantine["source"]) == {str(path)}
    for fragment in fragments:
        assert all(fragment in reason for reason in quarantine["quarantine_reasons"]), quarantine["quarantine_reasons"]
    assert not set(ingested.preferences["source_line"]) & set(lines)
    return quarantine


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".parquet"])
def test_null_chosen_is_quarantined_and_the_other_records_are_read(tmp_path, suffix):
    records = padded([dict(r) for r in TRL_EXPLICIT], TRL_EXPLICIT[0])
    records[1]["chosen"] = None
    path = write_records(tmp_path / f"prefs{suffix}", records)
    ingested = read_source(path)
    quarantine = assert_quarantined(ingested, path, [2], "'chosen' is missing or null")
    assert quarantine["source_format"].tolist() == ["trl_explicit"]
    table = ingested.preferences
    assert len(table) == len(records) - 1
    assert table["source_line"].tolist() == [n for n in first_lines(suffix, len(records)) if n != 2]
    assert table["chosen"].tolist()[:2] == [TRL_EXPLICIT[0]["chosen"], TRL_EXPLICIT[2]["chosen"]]
    record = json.loads(quarantine["record"].iloc[0])
    assert record["chosen"] is None and record["prompt"] == TRL_EXPLICIT[1]["prompt"]


@pytest.mark.parametrize("fmt", ["auto", "trl_explicit"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json.gz"])
def test_a_number_where_text_belongs_is_quarantined(tmp_path, fmt, suffix):
    # among strings, Arrow's reader refuses the whole file; the slow reader sets the record aside
    records = padded([dict(r) for r in TRL_EXPLICIT], TRL_EXPLICIT[0])
    records[2]["chosen"] = 5
    path = write_records(tmp_path / f"wrong{suffix}", records)
    ingested = read_source(path, fmt)
    quarantine = assert_quarantined(ingested, path, [3], "'chosen' must be a string, got int")
    assert json.loads(quarantine["record"].iloc[0])["chosen"] == 5
    assert len(ingested.preferences) == len(records) - 1
    assert set(ingested.preferences["source_format"]) == {"trl_explicit"}


def test_a_numeric_field_holding_text_is_quarantined(tmp_path):
    records = padded([dict(r) for r in TRL_EXPLICIT], TRL_EXPLICIT[0])
    records[0]["margin"] = "strong"
    path = write_records(tmp_path / "margins.jsonl", records)
    assert_quarantined(read_source(path), path, [1], "'margin' must be a number, got 'strong'")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json"])
def test_a_duplicated_key_is_quarantined_naming_its_line(tmp_path, suffix):
    good = json.dumps(TRL_EXPLICIT[0])
    twice = '{"prompt": "Refund?", "chosen": "Yes.", "chosen": "No.", "rejected": "Maybe."}'
    lines = [good, good, twice, *[good] * PADDING]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if suffix == ".json" else "\n".join(lines) + "\n"
    path = write_bytes(tmp_path / f"twice{suffix}", text.encode())
    ingested = read_source(path)
    # a JSON array counts records; its first record sits on line 2, but it is record 1
    quarantine = assert_quarantined(ingested, path, [3], "duplicate key 'chosen'")
    if suffix != ".json":
        assert quarantine["record"].tolist() == [twice]  # the line as written, both keys and all
    assert "Refund?" not in set(ingested.preferences["prompt"])
    assert len(ingested.preferences) == len(lines) - 1


def test_a_duplicated_key_inside_a_message_is_quarantined(tmp_path):
    good = json.dumps(CONVERSATIONAL_IMPLICIT[1])
    twice = (
        '{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "role": "user", "content": "Yo"}],'
        ' "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]}'
    )
    path = write_bytes(tmp_path / "chat.jsonl", "\n".join([good, twice, *[good] * PADDING]).encode())
    assert_quarantined(read_source(path), path, [2], "duplicate key 'role' in element 2 of 'chosen'")


def test_one_record_quarantined_for_every_reason_it_has(tmp_path):
    records = padded([dict(r) for r in TRL_EXPLICIT], TRL_EXPLICIT[0])
    records[1].update(chosen=None, rejected=None, margin="x")
    path = write_records(tmp_path / "prefs.jsonl", records)
    quarantine = assert_quarantined(read_source(path), path, [2])
    assert quarantine["quarantine_reasons"].iloc[0] == (
        "'chosen' is missing or null; 'rejected' is missing or null; 'margin' must be a number, got 'x'"
    )


def test_quarantined_lines_count_blank_lines_and_csv_records_keep_their_text(tmp_path):
    rows = [json.dumps(r) for r in padded(list(TRL_EXPLICIT), TRL_EXPLICIT[0])]
    rows[1] = '{"prompt": "p", "chosen": null, "rejected": "r"}'
    path = write_bytes(tmp_path / "gaps.jsonl", "\n\n".join(rows).encode())
    assert_quarantined(read_source(path), path, [3])
    text = 'prompt,chosen,rejected,margin\n"two\nlines",a,b,oops\n' + "q,a,b,1\n" * PADDING
    path = write_bytes(tmp_path / "prefs.csv", text.encode())
    quarantine = assert_quarantined(read_source(path), path, [2], "'margin' must be a number, got 'oops'")
    assert quarantine["record"].tolist() == ['"two\nlines",a,b,oops']


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"responses": ["a", "b", "c"], "ranks": [1, 2]}, "'responses' has 3 items but 'ranks' has 2"),
        ({"ranks": [1, 2.5, 3, 4]}, "'ranks' must be a list of ints, got a float"),
        ({"ranks": ["1", "2", "3", "4"]}, "'ranks' must be a list of ints, got a string"),
        ({"ranks": [1, "2", 3, 4]}, "'ranks' mixes value types: element 2 is string, but int in element 1"),
        ({"ranks": "1234"}, "'ranks' must be a list of ints, got string"),
        ({"ranks": [0, 1, 2, 3]}, "'ranks' must be positive ints"),
        ({"responses": ["only one"], "ranks": [1]}, "2 or more responses"),
    ],
)
def test_bad_rankings_are_quarantined(tmp_path, bad, reason):
    records = padded([dict(r) for r in KWISE], KWISE[0])
    records[1].update(bad)
    path = write_records(tmp_path / "rankings.jsonl", records)
    ingested = read_source(path)
    assert_quarantined(ingested, path, [2], reason)
    # the others still expand to their pairs: 3 for each copy of the first ranking, none for the tied one
    assert len(ingested.preferences) == 3 * (1 + PADDING)
    assert ingested.preferences.attrs["ties_dropped"] == 1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"content": "hi"}, "message 2 of 'chosen' has no 'role'"),
        ({"role": "user"}, "message 2 of 'chosen' has no 'content'"),
        ({"role": "robot", "content": "hi"}, "message 2 of 'chosen' has unknown role 'robot'"),
        ({"role": "user", "content": 7}, "'content' of element 2 is int, but string in element 1"),
    ],
)
def test_bad_messages_are_quarantined(tmp_path, bad, reason):
    records = padded(json.loads(json.dumps(CONVERSATIONAL_IMPLICIT * 2)), CONVERSATIONAL_IMPLICIT[1])
    records[2]["chosen"][1] = bad
    path = write_records(tmp_path / "chat.jsonl", records)
    ingested = read_source(path)
    assert_quarantined(ingested, path, [3], reason)
    table = ingested.preferences
    # the records around the bad one are rendered as before (their messages did not shift)
    assert table["chosen"].tolist()[:4] == ["Sure, what is the number?", "Of course.", "Of course.", "Of course."]
    assert table["prompt"][1] == "\n\nHuman: Refund please\n\nAssistant:"


def test_conversation_must_end_with_the_assistant(tmp_path):
    record = {"chosen": [message("user", "hi")], "rejected": [message("user", "hi"), message("assistant", "yo")]}
    records = padded([CONVERSATIONAL_IMPLICIT[0], record], CONVERSATIONAL_IMPLICIT[1])
    path = write_records(tmp_path / "chat.parquet", records)
    ingested = read_source(path)
    quarantine = assert_quarantined(
        ingested, path, [2], "the last message of 'chosen' must come from the assistant, got 'user'"
    )
    assert json.loads(quarantine["record"].iloc[0])["chosen"] == [message("user", "hi")]  # fields, as read


def test_missing_value_in_one_record_is_quarantined(tmp_path):
    records = padded([dict(r) for r in TRL_EXPLICIT], TRL_EXPLICIT[0])
    del records[2]["rejected"]
    path = write_records(tmp_path / "missing.jsonl", records)
    assert_quarantined(read_source(path), path, [3], "'rejected' is missing or null")


def test_hh_transcript_without_an_assistant_turn_is_quarantined(tmp_path):
    records = padded([*HH_RLHF, {"chosen": "\n\nHuman: hello", "rejected": "\n\nHuman: hello\n\nAssistant: hi"}],
                     HH_RLHF[0])
    path = write_records(tmp_path / "hh.jsonl", records)
    ingested = read_source(path)
    assert_quarantined(ingested, path, [4], "'chosen' has no '\\n\\nAssistant:' turn")
    assert ingested.preferences["chosen"].tolist()[:3] == [" Gladly.", "", "Why did the chicken cross the road?"]


def test_real_hh_sample_with_broken_records_keeps_the_rest(tmp_path):
    lines = gzip.decompress(HH_SAMPLE.read_bytes()).decode().splitlines()
    lines[99] = json.dumps({**json.loads(lines[99]), "chosen": None})
    lines[199] = json.dumps({**json.loads(lines[199]), "rejected": 42})
    lines[299] = lines[299].replace('{"chosen":', '{"rejected": "x", "chosen":', 1)
    path = write_bytes(tmp_path / "hh.jsonl.gz", "\n".join(lines).encode())
    ingested = read_source(path, fmt="hh_rlhf")
    quarantine = assert_quarantined(ingested, path, [100, 200, 300])
    assert quarantine["quarantine_reasons"].tolist() == [
        "'chosen' is missing or null", "'rejected' must be a string, got int", "duplicate key 'rejected'",
    ]
    assert len(ingested.preferences) == len(lines) - 3


# --- bad files are refused -------------------------------------------------------------------------


def test_a_mostly_broken_file_is_refused_naming_its_first_bad_line(tmp_path):
    records = padded([dict(r) for r in TRL_EXPLICIT], TRL_EXPLICIT[0])
    for record in records[5:15]:
        record["chosen"] = None
    path = write_records(tmp_path / "broken.jsonl", records)
    with pytest.raises(IngestionError) as excinfo:
        read_source(path)
    assert_error(excinfo, path, 6, "'chosen' is missing or null", "10 of 43 records", "max_quarantined_fraction 5.0%")
    assert len(read_source(path, max_quarantined_fraction=0.5).quarantine) == 10  # unless the user allows it


def test_a_file_read_in_the_wrong_format_is_refused_whatever_the_allowance(tmp_path):
    path = write_records(tmp_path / "explicit.jsonl", padded(list(TRL_EXPLICIT), TRL_EXPLICIT[0]))
    with pytest.raises(IngestionError) as excinfo:
        read_source(path, fmt="hh_rlhf", max_quarantined_fraction=1.0)
    assert_error(excinfo, path, 1, "'chosen' has no '\\n\\nAssistant:' turn", "so are the other 42 records",
                 "read as hh_rlhf")


@pytest.mark.parametrize("count", [1, 3])  # one record: the error is the record's; several: all are named
def test_a_file_whose_every_record_is_bad_is_refused(tmp_path, count):
    records = [{**r, "chosen": 5} for r in TRL_EXPLICIT[:count]]
    path = write_records(tmp_path / "wrong.jsonl", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 1, "'chosen' must be a string or a list of messages, got int")
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path, fmt="trl_explicit")
    assert_error(excinfo, path, 1, "'chosen' must be a string, got int")
    assert ("so are the other" in excinfo.value.reason) == (count > 1)


def test_wrong_type_in_a_small_json_array_refuses_the_file_by_record(tmp_path):
    records = [dict(r) for r in TRL_EXPLICIT]
    records[1]["rejected"] = None  # one record in three is far above the allowance
    path = write_records(tmp_path / "wrong.json", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 2, "'rejected' is missing or null", "1 of 3 records", unit="record")


def good_lines(count: int) -> bytes:
    return jsonl_bytes([TRL_EXPLICIT[0]] * count)


@pytest.mark.parametrize(
    ("name", "data", "line", "reason"),
    [
        ("not_json.jsonl", good_lines(50) + b'{"prompt": "x", "chosen": \n' + good_lines(50), 51, "invalid JSON"),
        ("latin1.jsonl", good_lines(50) + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n', 51,
         "not UTF-8"),
        ("no_rejected.jsonl", jsonl_bytes([{"prompt": "p", "chosen": "c"}] * 100), 1,
         "missing required column(s) 'rejected'"),
        ("ragged.csv", b"prompt,chosen,rejected\n" + b"a,b,c\n" * 50 + b"a,b,c,d\n", 52, "expected 3 fields"),
        ("truncated.jsonl.gz", gzip.compress(good_lines(2000))[:-40], None, "cannot be read"),
    ],
)
def test_file_level_defects_stop_ingestion_even_among_good_records(tmp_path, name, data, line, reason):
    path = write_bytes(tmp_path / name, data, compress=False)
    with pytest.raises(IngestionError) as excinfo:
        read_source(path, max_quarantined_fraction=1.0)
    assert_error(excinfo, path, line, reason)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".csv"])
def test_bytes_that_are_not_utf8_are_named(tmp_path, suffix):
    good = TRL_EXPLICIT[0]
    if suffix == ".csv":
        text = b"prompt,chosen,rejected\na,b,c\na,b,c\nq,caf\xe9,r\n"
    else:
        text = jsonl_bytes([good, good]) + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
    path = write_bytes(tmp_path / f"latin1{suffix}", text)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 3 if suffix != ".csv" else 4, "not UTF-8")


@pytest.mark.parametrize(
    ("name", "data"),
    [("empty.jsonl", b""), ("blank.jsonl.gz", b"\n \n"), ("empty.csv", b""),
     ("header_only.csv", b"prompt,chosen,rejected\n"), ("empty.json", b"[]")],
)
def test_empty_file_is_refused(tmp_path, name, data):
    path = write_bytes(tmp_path / name, data)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 1, "no records")


def test_ingestion_error_survives_pickling():
    error = pickle.loads(pickle.dumps(IngestionError("data/x.jsonl", 17, "'chosen' must be a string")))
    assert (error.path, error.line) == ("data/x.jsonl", 17)
    assert str(error) == "data/x.jsonl line 17: 'chosen' must be a string"


def test_csv_row_with_wrong_field_count_is_named(tmp_path):
    path = write_bytes(tmp_path / "ragged.csv", b"prompt,chosen,rejected\na,b,c\na,b,c,d\n")
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 3, "expected 3 fields")


def test_unreadable_or_unknown_files(tmp_path):
    with pytest.raises(IngestionError, match="no such file"):
        read_preferences(tmp_path / "absent.jsonl")
    with pytest.raises(IngestionError, match="unsupported file type"):
        read_preferences(write_bytes(tmp_path / "prefs.txt", b"hello"))
    with pytest.raises(IngestionError, match="cannot be read"):
        read_preferences(write_bytes(tmp_path / "fake.jsonl.gz", b"not gzip at all", compress=False))
    with pytest.raises(IngestionError, match="not a readable parquet file"):
        read_preferences(write_bytes(tmp_path / "fake.parquet", b"not parquet"))
    with pytest.raises(ValueError, match="unknown preference format"):
        read_preferences(tmp_path / "absent.jsonl", fmt="yaml")
    with pytest.raises(IngestionError, match="no file matches"):
        resolve_sources(str(tmp_path / "*.jsonl"))


# --- record checks ---------------------------------------------------------------------------------


def test_violations_keep_every_bad_record_with_all_its_reasons():
    violations = Violations(5)
    violations.add(np.array([False, True, False, True, False]), "plain")
    named = []
    item_rows = np.array([0, 0, 3, 3, 3, 4])  # list items of records 0, 3 and 4
    violations.add(np.array([False, False, True, True, False, True]), lambda i: named.append(i) or f"item {i}",
                   rows=item_rows)
    assert named == [2, 5]  # called once per record, for its first marked item
    assert violations.good_rows().tolist() == [0, 2]
    assert violations.first() == (1, "plain")
    quarantine = violations.quarantine()
    assert quarantine["row"].tolist() == [1, 3, 4]
    assert quarantine["reason"].tolist() == ["plain", "plain; item 2", "item 5"]
    assert Violations(3).quarantine().empty and Violations(3).first() is None
