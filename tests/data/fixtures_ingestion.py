"""Small preference files of every format, written the way real tools write them."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pandas as pd

TRL_EXPLICIT = [
    {"prompt": "How do I reset my password?", "chosen": "Open Settings, then Security.", "rejected": "No idea.",
     "margin": 2.5, "annotator_id": "ann-1"},
    {"prompt": "Is the shop open on Sunday?", "chosen": "Yes, from 10 to 4.", "rejected": "Maybe.",
     "margin": 1.0, "annotator_id": "ann-2"},
    {"prompt": "Can I return shoes?", "chosen": "Within 30 days, with the receipt.", "rejected": "Returns are hard.",
     "margin": 0.5, "annotator_id": "ann-1"},
]


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


CONVERSATIONAL_IMPLICIT = [
    {  # a system turn, two user turns: everything before the last assistant turn is the prompt
        "chosen": [message("system", "Be brief."), message("user", "Hi"), message("assistant", "Hello!"),
                   message("user", "Track my order?"), message("assistant", " Sure, what is the number?")],
        "rejected": [message("system", "Be brief."), message("user", "Hi"), message("assistant", "Hello!"),
                     message("user", "Track my order?"), message("assistant", "No.")],
    },
    {  # the two transcripts disagree before the last turn
        "chosen": [message("user", "Refund please"), message("assistant", "Of course.")],
        "rejected": [message("user", "Refund now"), message("assistant", "Go away.")],
    },
]

CONVERSATIONAL_EXPLICIT = [
    {
        "prompt": [message("user", "What is 2 + 2?")],
        "chosen": [message("assistant", "4")],
        "rejected": [message("assistant", "5")],
    },
]

HH_RLHF = [
    {  # multi-turn: the prompt runs to the LAST assistant marker; one leading space is removed
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:  Gladly.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant: No.",
    },
    {  # an empty chosen response is kept for validation to judge
        "chosen": "\n\nHuman: Say nothing\n\nAssistant:",
        "rejected": "\n\nHuman: Say nothing\n\nAssistant: Something.",
    },
    {  # transcripts that differ before the last turn
        "chosen": "\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross the road?",
        "rejected": "\n\nHuman: Tell me a fact\n\nAssistant: Water is wet.",
    },
]

KWISE = [
    {"prompt": "Where is my parcel?", "responses": ["It is on its way.", "Dunno.", "Tracking says Tuesday."],
     "ranks": [2, 3, 1], "annotator_id": "ann-1", "item_id": "item-7"},
    {"prompt": "Cancel my plan", "responses": ["Done.", "Cancelled, you will get an email.", "Why?", "Ok."],
     "ranks": [2, 1, 3, 2], "annotator_id": "ann-2"},  # a tie between "Done." and "Ok."
    {"prompt": "Hello", "responses": ["Hi", "Hey"], "ranks": [1, 1]},  # all tied: no pairs at all
]


def write_records(path: Path, records: list[dict]) -> Path:
    """``records`` as the file type ``path`` names: .jsonl, .json, .csv (each maybe .gz) or .parquet."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        pd.DataFrame(records).to_parquet(path)
        return path
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif name.endswith(".json"):
        text = json.dumps(records, indent=2)
    elif name.endswith(".csv"):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    else:
        raise ValueError(f"no writer for {path}")
    write_bytes(path, text.encode("utf-8"))
    return path


def write_bytes(path: Path, data: bytes, *, compress: bool | None = None) -> Path:
    """``data`` at ``path``, gzipped when the name ends .gz unless ``compress`` says otherwise."""
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
