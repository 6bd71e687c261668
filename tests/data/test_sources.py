"""A user's SFT demonstrations and evaluation prompts: from their preferences or files, never across the split."""

from __future__ import annotations

import pandas as pd
import pytest

from alignops.pipelines.sources.nodes import file_demonstrations, file_eval_prompts, heldout_eval_prompts
from alignops.pipelines.sources.pipeline import create_pipeline
from alignops.preferences.sources import (
    SourcesConfig,
    demonstrations_from_chosen,
    read_demonstrations,
    select_eval_prompts,
)

TRAIN = pd.DataFrame({"prompt": ["p1", "p1", "p2"], "chosen": ["a", "a", "b"], "rejected": ["x", "y", "z"]})
HELDOUT = pd.DataFrame({"prompt": ["h1", "h2", "h1"], "chosen": ["c", "d", "e"], "rejected": ["u", "v", "w"]})
AUDIT = pd.DataFrame({"prompt": ["a1"], "chosen": ["f"], "rejected": ["g"]})


def test_sft_on_chosen_replies_takes_each_distinct_pair_once():
    demos = demonstrations_from_chosen(TRAIN)
    assert list(zip(demos["prompt"], demos["response"], strict=True)) == [("p1", "a"), ("p2", "b")]
    assert demos["prompt_id"].is_unique


def test_demonstrations_read_from_prompt_response_or_messages_records():
    plain = read_demonstrations(pd.DataFrame({"prompt": ["hi"], "response": ["hello"]}))
    assert (plain["prompt"].tolist(), plain["response"].tolist()) == (["hi"], ["hello"])
    messages = pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                           {"role": "user", "content": "again"},
                                           {"role": "assistant", "content": "hello"}]]})
    chat = read_demonstrations(messages)
    assert chat["prompt"].tolist() == ["\n\nHuman: hi\n\nAssistant: yo\n\nHuman: again\n\nAssistant:"]
    assert chat["response"].tolist() == ["hello"]
    with pytest.raises(ValueError, match="line 2: the last message must be the assistant's reply"):
        read_demonstrations(pd.DataFrame({"messages": [messages["messages"][0],
                                                       [{"role": "user", "content": "a"}] * 2]}))


def test_held_out_prompts_are_each_evaluated_once_in_a_fixed_order():
    prompts = heldout_eval_prompts(HELDOUT, {})
    assert sorted(prompts["prompt"]) == ["h1", "h2"]
    assert select_eval_prompts(HELDOUT["prompt"][::-1], SourcesConfig()).equals(prompts)  # not the file's order
    assert len(select_eval_prompts(HELDOUT["prompt"], SourcesConfig(max_eval_prompts=1))) == 1


def test_a_users_files_never_reach_across_the_split():
    raw = pd.DataFrame({"prompt": ["p1", "h1", "a1", "new"], "response": ["r1", "r2", "r3", "r4"]})
    demos = file_demonstrations(raw, HELDOUT, AUDIT)
    assert demos["prompt"].tolist() == ["p1", "new"]  # SFT and PPO never see held-out or audit prompts
    prompts = file_eval_prompts(pd.DataFrame({"prompt": ["p1", "h1", "a1", "h2"]}), TRAIN, AUDIT, {})
    assert sorted(prompts["prompt"]) == ["h1", "h2"]  # nothing a policy or the audit judge trained on
    with pytest.raises(ValueError, match="none is left for SFT"):
        file_demonstrations(raw.iloc[1:3], HELDOUT, AUDIT)


def test_the_pipeline_reads_the_split_it_guards():
    nodes = create_pipeline(sft="demonstrations", eval_prompts="file").nodes
    assert {"raw_demonstrations", "raw_eval_prompts", "preferences_heldout", "preferences_audit",
            "preferences_train"} <= {name for n in nodes for name in n.inputs}
    assert {n.name for n in create_pipeline().nodes} == {"chosen_demonstrations", "heldout_eval_prompts"}


def test_config_rejects_unknown_sources():
    with pytest.raises(ValueError, match="sources.kind"):
        SourcesConfig(kind="hub")
    with pytest.raises(TypeError):
        SourcesConfig(knid="files")
