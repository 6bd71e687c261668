"""Ingestion: every source format into the canonical table, and precise errors for bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest

from alignops.preferences.ingestion import (
    IngestionError,
    ingestion_summary,
    read_preference_files,
    read_preferences,
    resolve_sources,
)
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
                       "sources": 3, "ties_dropped": 2, "inconsistent_prompts": 1}


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


@pytest.mark.parametrize("count", [1, 30])  # alone, the column is all ints; among strings, the reader fails
def test_wrong_type_names_field_type_and_line(tmp_path, count):
    records = [dict(r) for r in (TRL_EXPLICIT * 10)[:count]]
    records[-1]["chosen"] = 5
    path = write_records(tmp_path / "wrong.jsonl", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, count, "'chosen' must be a string or a list of messages, got int")
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path, fmt="trl_explicit")
    assert_error(excinfo, path, count, "'chosen' must be a string, got int")


def test_wrong_type_in_a_json_array_is_named_by_record(tmp_path):
    records = [dict(r) for r in TRL_EXPLICIT]
    records[1]["rejected"] = None
    path = write_records(tmp_path / "wrong.json", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 2, "'rejected' is missing or null", unit="record")


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
def test_bad_rankings_are_named(tmp_path, bad, reason):
    records = [dict(r) for r in KWISE]
    records[1].update(bad)
    path = write_records(tmp_path / "rankings.jsonl", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 2, reason)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"content": "hi"}, "message 2 of 'chosen' has no 'role'"),
        ({"role": "user"}, "message 2 of 'chosen' has no 'content'"),
        ({"role": "robot", "content": "hi"}, "message 2 of 'chosen' has unknown role 'robot'"),
        ({"role": "user", "content": 7}, "'content' of element 2 is int, but string in element 1"),
    ],
)
def test_bad_messages_are_named(tmp_path, bad, reason):
    records = json.loads(json.dumps(CONVERSATIONAL_IMPLICIT * 2))
    records[2]["chosen"][1] = bad
    path = write_records(tmp_path / "chat.jsonl", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 3, reason)


def test_conversation_must_end_with_the_assistant(tmp_path):
    record = {"chosen": [message("user", "hi")], "rejected": [message("user", "hi"), message("assistant", "yo")]}
    path = write_records(tmp_path / "chat.parquet", [CONVERSATIONAL_IMPLICIT[0], record])
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 2, "the last message of 'chosen' must come from the assistant, got 'user'",
                 unit="record")


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


def test_missing_value_in_one_record_is_named(tmp_path):
    records = [dict(r) for r in TRL_EXPLICIT]
    del records[2]["rejected"]
    path = write_records(tmp_path / "missing.jsonl", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 3, "'rejected' is missing or null")


def test_hh_transcript_without_an_assistant_turn_is_named(tmp_path):
    records = [*HH_RLHF, {"chosen": "\n\nHuman: hello", "rejected": "\n\nHuman: hello\n\nAssistant: hi"}]
    path = write_records(tmp_path / "hh.jsonl", records)
    with pytest.raises(IngestionError) as excinfo:
        read_preferences(path)
    assert_error(excinfo, path, 4, "'chosen' has no '\\n\\nAssistant:' turn")


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
