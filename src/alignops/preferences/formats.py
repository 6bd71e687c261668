"""Preference source formats, turned into canonical rows.

Each format reads an Arrow table with one row per source record (as ``datasets``
parsed the file) and returns the canonical columns plus ``row``, the 0-based
record each canonical row came from, and the records it set aside with their
reasons; ingestion turns ``row`` into a file line. This module never sees a file,
and never loops over records in Python: vectorised checks mark the bad records
(``Violations``), and only the others are converted. A defect of the table as a
whole (a missing column) raises ``RecordError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from alignops.preferences.record_checks import (
    TEXT,
    RecordError,
    Violations,
    check_type,
    column,
    is_list,
    is_text,
    json_type,
    mask,
    optional_ids,
    optional_number,
    text_column,
    valid,
)

_Column = TypeVar("_Column", pa.Array, pd.Series)

#: format -> the columns a record of it must have.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "trl_explicit": ("prompt", "chosen", "rejected"),
    "trl_conversational": ("chosen", "rejected"),
    "hh_rlhf": ("chosen", "rejected"),
    "kwise": ("prompt", "responses", "ranks"),
}
FORMATS: tuple[str, ...] = tuple(REQUIRED_COLUMNS)

HH_ASSISTANT = "\n\nAssistant:"
#: chat role -> the speaker label of an HH-style transcript.
ROLE_LABELS: dict[str, str] = {"user": "Human", "assistant": "Assistant", "system": "System"}


class Parsed(NamedTuple):
    frame: pd.DataFrame  # canonical columns that the format knows, plus ``row``, of the good records
    quarantine: pd.DataFrame  # ``row`` and ``reason`` of every record set aside
    ties_dropped: int = 0  # k-wise response pairs with equal ranks (no preference to learn)


def missing_columns_reason(found: list[str], formats: tuple[str, ...]) -> str:
    """Names what the closest format lacks, the columns found and what every considered format needs."""
    missing = {f: [c for c in REQUIRED_COLUMNS[f] if c not in found] for f in formats}
    closest = min(formats, key=lambda f: len(missing[f]))
    needs = "; ".join(f"{f} needs {', '.join(REQUIRED_COLUMNS[f])}" for f in formats)
    return (
        f"missing required column(s) {', '.join(repr(c) for c in missing[closest])} for {closest} "
        f"(found columns: {', '.join(found) or 'none'}; formats considered: {needs})"
    )


def detect_format(table: pa.Table) -> str:
    """The format a table's columns and types say it holds."""
    names = table.column_names
    if "responses" in names and "ranks" in names:
        return "kwise"
    if "chosen" in names and "rejected" in names:
        chosen = table.schema.field("chosen").type
        if is_list(chosen):
            return "trl_conversational"
        if is_text(chosen):
            return "trl_explicit" if "prompt" in names else "hh_rlhf"
        present = np.flatnonzero(valid(column(table, "chosen")))
        if not present.size:
            raise RecordError(0, "'chosen' is missing or null")
        raise RecordError(int(present[0]), f"'chosen' must be a string or a list of messages, got {json_type(chosen)}")
    raise RecordError(0, missing_columns_reason(names, FORMATS))


def _require_columns(table: pa.Table, fmt: str) -> None:
    if any(c not in table.column_names for c in REQUIRED_COLUMNS[fmt]):
        raise RecordError(0, missing_columns_reason(table.column_names, (fmt,)))


def _frame(row: np.ndarray, columns: dict[str, pa.Array | pd.Series | np.ndarray]) -> pd.DataFrame:
    """Canonical columns (series with a default index, so they align by position) and their records."""
    columns = {name: c.to_pandas() if isinstance(c, pa.Array) else c for name, c in columns.items()}
    return pd.DataFrame({"row": row, **columns})


def _select(values: _Column, good: np.ndarray) -> _Column:
    """The good records of a full-length column (the column itself when all are good)."""
    if len(good) == len(values):
        return values
    if isinstance(values, pd.Series):
        return values.iloc[good].reset_index(drop=True)
    return values.take(pa.array(good))


def _nothing(violations: Violations) -> Parsed:
    """Every record was set aside: ingestion refuses the file."""
    return Parsed(pd.DataFrame({"row": np.zeros(0, np.int64)}), violations.quarantine())


def trl_explicit(table: pa.Table) -> Parsed:
    """TRL explicit-prompt records: ``prompt``, ``chosen``, ``rejected`` strings."""
    _require_columns(table, "trl_explicit")
    violations = Violations(table.num_rows)
    texts = {name: text_column(table, name, violations) for name in REQUIRED_COLUMNS["trl_explicit"]}
    ids = optional_ids(table, violations)
    margin = optional_number(table, "margin", violations)
    good = violations.good_rows()
    if not good.size:
        return _nothing(violations)
    numbers = {} if margin is None else {"margin": margin}
    columns = {name: _select(values, good) for name, values in {**texts, **ids, **numbers}.items()}
    consistent = np.ones(len(good), bool)  # an explicit prompt is shared by construction
    return Parsed(_frame(good, {**columns, "prompt_consistent": consistent}), violations.quarantine())


def _split_transcript(transcript: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Each transcript split at its last assistant turn, and whether it has one (two parts)."""
    parts = pc.split_pattern(transcript, HH_ASSISTANT, max_splits=1, reverse=True)
    return parts, mask(pc.equal(pc.list_value_length(parts), 2))


def _context_and_reply(parts: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(context before the last assistant turn, reply after it) of split transcripts that have the turn."""
    context = pc.list_element(parts, 0)
    reply = pc.list_element(parts, 1)
    reply = pc.if_else(pc.starts_with(reply, " "), pc.utf8_slice_codeunits(reply, 1), reply)
    return context, reply


def hh_rlhf(table: pa.Table) -> Parsed:
    """Anthropic HH-RLHF transcripts: the prompt is everything up to the last assistant turn.

    A pair whose transcripts differ before that turn is kept with the chosen side's
    prompt and ``prompt_consistent=False``: the data is real, validation decides.
    """
    _require_columns(table, "hh_rlhf")
    violations = Violations(table.num_rows)
    transcripts = {name: text_column(table, name, violations) for name in ("chosen", "rejected")}
    ids = optional_ids(table, violations)
    parts = {}
    for name, transcript in transcripts.items():
        if transcript is not None:
            parts[name], has_turn = _split_transcript(transcript)
            violations.add(valid(transcript) & ~has_turn, f"'{name}' has no '\\n\\nAssistant:' turn to answer")
    good = violations.good_rows()
    if not good.size:
        return _nothing(violations)
    chosen_context, chosen_reply = _context_and_reply(_select(parts["chosen"], good))
    rejected_context, rejected_reply = _context_and_reply(_select(parts["rejected"], good))
    consistent = mask(pc.equal(chosen_context, rejected_context))
    prompt = chosen_context.to_pandas() + HH_ASSISTANT
    ids = {name: _select(values, good) for name, values in ids.items()}
    return Parsed(_frame(good, {
        "prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply, **ids,
        "prompt_consistent": consistent,
    }), violations.quarantine())


class _Messages(NamedTuple):  # every record's messages, flattened in record order
    rendered: pd.Series  # "\n\nHuman: {content}" and so on
    content: pd.Series
    row: np.ndarray  # the record each message belongs to
    is_last: np.ndarray


def _positions(array: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every item of a list column: its record, its 0-based place in the list, whether it is last."""
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    row = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
    position = np.arange(len(row)) - np.searchsorted(row, row)
    return row, position, position == lengths[row] - 1


def _check_messages(table: pa.Table, name: str, violations: Violations, *, is_prompt: bool) -> None:
    """Mark the records whose column ``name`` is not a list of well-formed chat messages."""
    array = column(table, name)
    if not (is_list(array.type) and pa.types.is_struct(array.type.value_type)):
        check_type(violations, array, name, "a list of messages ({role, content} objects)")
        return
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    violations.add(~valid(array), f"'{name}' is missing or null")
    if not is_prompt:
        violations.add(valid(array) & (lengths == 0), f"'{name}' has no messages")
    flat = pc.list_flatten(array)
    row, position, is_last = _positions(array)

    def where(i: int) -> str:  # names message i of the flattened lists for a reason
        return f"message {position[i] + 1} of '{name}'"

    violations.add(~valid(flat), lambda i: f"{where(i)} is null", rows=row)
    fields = {}
    for field in ("role", "content"):
        present = flat.type.get_field_index(field) >= 0
        values = pc.struct_field(flat, field) if present else pa.nulls(len(flat))
        if not (is_text(values.type) or pa.types.is_null(values.type)):
            wrong = f"{{}}: '{field}' must be a string, got {json_type(values.type)}"
            violations.add(valid(values), lambda i: wrong.format(where(i)), rows=row)  # noqa: B023 (called at once)
            # the column cannot be rendered at all: what no item showed, the records still share
            violations.add(~violations.bad, f"'{name}' holds messages whose '{field}' is not a string")
            return
        violations.add(
            valid(flat) & ~valid(values), lambda i: f"{where(i)} has no '{field}'", rows=row  # noqa: B023 (called at once)
        )
        fields[field] = values.cast(TEXT).to_pandas()
    role = fields["role"]
    has_role = role.notna().to_numpy(dtype=bool)  # a missing role is reported above, once
    known = role.isin(list(ROLE_LABELS)).to_numpy(dtype=bool)
    unknown = f"{{}} has unknown role {{!r}} (expected {', '.join(ROLE_LABELS)})"
    violations.add(has_role & ~known, lambda i: unknown.format(where(i), role.iloc[i]), rows=row)
    if not is_prompt:  # a prompt ends where the reply begins; chosen and rejected end with the reply
        not_assistant = is_last & has_role & (role != "assistant").to_numpy(dtype=bool, na_value=False)
        last = f"the last message of '{name}' must come from the assistant, got {{!r}}"
        violations.add(not_assistant, lambda i: last.format(role.iloc[i]), rows=row)


def _messages(array: pa.Array) -> _Messages:
    """A column of checked message lists, flattened and rendered as HH-style turns."""
    flat = pc.list_flatten(array)
    row, _, is_last = _positions(array)
    role, content = (pc.struct_field(flat, field).cast(TEXT).to_pandas() for field in ("role", "content"))
    rendered = "\n\n" + role.map(ROLE_LABELS) + ": " + content
    return _Messages(rendered, content, row, is_last)


def _join(rendered: pd.Series, row: np.ndarray, num_rows: int) -> pa.Array:
    """Concatenate each record's rendered messages (records without any give "")."""
    offsets = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=num_rows), out=offsets[1:])
    values = pa.array(rendered.to_numpy(dtype=object), type=TEXT)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pc.binary_join(lists, pa.scalar("", TEXT))


def trl_conversational(table: pa.Table) -> Parsed:
    """TRL conversational records, rendered as HH-style transcripts.

    The prompt is the explicit ``prompt`` messages (if any) plus everything before
    the final assistant turn; chosen and rejected are those final turns. When the
    two sides' context differs the chosen side's is kept, ``prompt_consistent=False``.
    """
    _require_columns(table, "trl_conversational")
    violations = Violations(table.num_rows)
    names = ("chosen", "rejected", "prompt") if "prompt" in table.column_names else ("chosen", "rejected")
    for name in names:
        _check_messages(table, name, violations, is_prompt=name == "prompt")
    ids = optional_ids(table, violations)
    good = violations.good_rows()
    if not good.size:
        return _nothing(violations)
    n = len(good)
    contexts, replies = {}, {}
    for name in ("chosen", "rejected"):
        side = _messages(_select(column(table, name), good))
        contexts[name] = _join(side.rendered[~side.is_last], side.row[~side.is_last], n)
        replies[name] = side.content[side.is_last].reset_index(drop=True).str.lstrip(" ")
    consistent = mask(pc.equal(contexts["chosen"], contexts["rejected"]))
    prompt = contexts["chosen"].to_pandas()
    if "prompt" in names:
        explicit = _messages(_select(column(table, "prompt"), good))
        prompt = _join(explicit.rendered, explicit.row, n).to_pandas() + prompt
    ids = {name: _select(values, good) for name, values in ids.items()}
    return Parsed(_frame(good, {
        "prompt": prompt + HH_ASSISTANT, **replies, **ids, "prompt_consistent": consistent,
    }), violations.quarantine())


def _integral_ranks(ranks: pa.Array) -> tuple[pa.Array, np.ndarray, str]:
    """Rank values as int64, the items that are no ints, and what they are instead.

    JSON writers sometimes emit 2.0 for 2; that is still a rank, 2.5 is not. Ranks of
    another type come back unchanged, every present one marked.
    """
    if pa.types.is_integer(ranks.type):
        return ranks.cast(pa.int64()), np.zeros(len(ranks), bool), ""
    if pa.types.is_floating(ranks.type):
        values = ranks.to_numpy(zero_copy_only=False)
        fractional = ~np.isnan(values) & (values != np.round(values))
        return pc.cast(ranks, pa.int64(), safe=False), fractional, "float"
    return ranks, valid(ranks), json_type(ranks.type)


def _check_rankings(table: pa.Table, violations: Violations) -> None:
    """Mark the records whose ``responses`` and ``ranks`` do not make a ranking."""
    responses, ranks = column(table, "responses"), column(table, "ranks")
    responses_ok = is_list(responses.type) and (
        is_text(responses.type.value_type) or pa.types.is_null(responses.type.value_type)  # null: all empty
    )
    if not responses_ok:
        check_type(violations, responses, "responses", "a list of strings")
    if not is_list(ranks.type):
        check_type(violations, ranks, "ranks", "a list of ints")
    if not (responses_ok and is_list(ranks.type)):
        return
    count = pc.list_value_length(responses).fill_null(0).to_numpy(zero_copy_only=False)
    violations.add(~valid(responses), "'responses' is missing or null")
    violations.add(~valid(ranks), "'ranks' is missing or null")
    rank_count = pc.list_value_length(ranks).fill_null(0).to_numpy(zero_copy_only=False)
    both = valid(responses) & valid(ranks)
    mismatch = "'responses' has {} items but 'ranks' has {}"
    violations.add(both & (count != rank_count), lambda r: mismatch.format(count[r], rank_count[r]))
    violations.add(both & (count < 2), lambda r: f"a ranking needs 2 or more responses, got {count[r]}")
    text_row = pc.list_parent_indices(responses).to_numpy(zero_copy_only=False)
    violations.add(~valid(pc.list_flatten(responses)), "'responses' holds a null response", rows=text_row)
    flat_rank, not_int, actual = _integral_ranks(pc.list_flatten(ranks))
    rank_row = pc.list_parent_indices(ranks).to_numpy(zero_copy_only=False)
    violations.add(not_int, lambda i: f"'ranks' must be a list of ints, got a {actual}", rows=rank_row)
    violations.add(~valid(flat_rank), "'ranks' holds a null rank", rows=rank_row)
    if pa.types.is_integer(flat_rank.type):
        rank_values = flat_rank.fill_null(1).to_numpy(zero_copy_only=False)
        reason = "'ranks' must be positive ints (1 = best), got {}"
        violations.add(~not_int & (rank_values < 1), lambda i: reason.format(rank_values[i]), rows=rank_row)


def kwise(table: pa.Table) -> Parsed:
    """K-wise rankings expanded to every ordered pair with a strictly better chosen rank.

    One ranking of K responses yields up to K(K-1)/2 pairs sharing its ``item_id``;
    tied responses give no pair (counted in ``ties_dropped``).
    """
    _require_columns(table, "kwise")
    violations = Violations(table.num_rows)
    prompt = text_column(table, "prompt", violations)
    _check_rankings(table, violations)
    ids = optional_ids(table, violations)
    good = violations.good_rows()
    if not good.size:
        return _nothing(violations)

    # Only the good records are flattened: a bad one may hold more responses than ranks.
    responses = _select(column(table, "responses"), good)
    ranks = _select(column(table, "ranks"), good)
    text_row = good[pc.list_parent_indices(responses).to_numpy(zero_copy_only=False)]
    flat_rank = _integral_ranks(pc.list_flatten(ranks))[0]
    # Every ordered pair inside a ranking: self-merge the items on their record.
    items = pd.DataFrame({"row": text_row, "rank": flat_rank.to_numpy(), "item": np.arange(len(text_row))})
    pairs = items.merge(items, on="row", suffixes=("_chosen", "_rejected"))
    tied = (pairs["rank_chosen"] == pairs["rank_rejected"]) & (pairs["item_chosen"] < pairs["item_rejected"])
    pairs = pairs[pairs["rank_chosen"] < pairs["rank_rejected"]].sort_values(
        ["row", "rank_chosen", "rank_rejected"], kind="stable"
    )
    row = pairs["row"].to_numpy()
    flat_text = pc.list_flatten(responses).cast(TEXT)
    per_pair = {name: values.iloc[row].reset_index(drop=True) for name, values in ids.items()}
    frame = _frame(row, {
        "prompt": prompt.take(pa.array(row)),
        "chosen": flat_text.take(pa.array(pairs["item_chosen"].to_numpy())),
        "rejected": flat_text.take(pa.array(pairs["item_rejected"].to_numpy())),
        **per_pair,
        "chosen_rank": pairs["rank_chosen"].to_numpy(),
        "rejected_rank": pairs["rank_rejected"].to_numpy(),
        "margin": (pairs["rank_rejected"] - pairs["rank_chosen"]).to_numpy(dtype=float),
        "prompt_consistent": np.ones(len(row), bool),
    })
    return Parsed(frame, violations.quarantine(), ties_dropped=int(tied.sum()))


#: format -> the function that turns its records into canonical rows.
PARSERS: dict[str, Callable[[pa.Table], Parsed]] = {
    "trl_explicit": trl_explicit,
    "trl_conversational": trl_conversational,
    "hh_rlhf": hh_rlhf,
    "kwise": kwise,
}
