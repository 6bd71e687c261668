"""The evaluation pipeline: both variants' wiring, and each run on an in-memory catalog with tiny models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from alignops.models.reward import RewardEnsemble, RewardModel, build_reward_backbone
from alignops.pipelines.evaluation import create_pipeline
from alignops.world import world_spec
from tests.helpers import TINY_LLAMA, CountingScorer, make_tiny_policy

CONF = Path(__file__).resolve().parents[2] / "conf"
OUTPUTS = {"evaluation_summary", "evaluation_samples", "evaluation_plot"}
INPUTS = {
    "sft_model",
    "ppo_model",
    "dpo_model",
    "tokenizer",
    "reward_model",
    "audit_judge",
    "eval_prompts",
    "preferences_heldout",
    "params:model",
    "params:generation",
    "params:evaluation",
}


def _params(name: str) -> dict:
    """``conf/base`` with ``conf/test`` over it, as the test environment reads them."""
    base = yaml.safe_load((CONF / "base" / f"parameters_{name}.yml").read_text())[name]
    test = CONF / "test" / f"parameters_{name}.yml"
    return base | (yaml.safe_load(test.read_text())[name] if test.exists() else {})


@pytest.mark.parametrize(("gold_judge", "extra"), [(True, {"gold_judge_spec"}), (False, set())])
def test_both_variants_are_one_node_with_the_same_outputs(gold_judge, extra):
    pipeline = create_pipeline(gold_judge=gold_judge)
    assert [n.name for n in pipeline.nodes] == ["evaluate_policies"]
    assert pipeline.inputs() == INPUTS | extra
    assert pipeline.outputs() == OUTPUTS


def _inputs(tokenizer, sft_model) -> dict:
    return {
        "sft_model": sft_model,
        "ppo_model": make_tiny_policy(tokenizer, seed=1),
        "dpo_model": make_tiny_policy(tokenizer, seed=2),
        "tokenizer": tokenizer,
        "reward_model": CountingScorer("e"),
        "audit_judge": CountingScorer("a"),
        "eval_prompts": pd.DataFrame({"prompt": ["where is my order", "reset my password", "refund please"]}),
        "preferences_heldout": pd.DataFrame(
            {"prompt": ["p", "q"], "chosen": ["help here", "yes"], "rejected": ["no", "a reply"]}
        ),
        "gold_judge_spec": world_spec(),
        "params:model": dataclasses.asdict(TINY_LLAMA),
        "params:generation": _params("generation") | {"max_new_tokens": 6},
        "params:evaluation": _params("evaluation"),
    }


def _run(inputs: dict, gold_judge: bool) -> DataCatalog:
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    for name in OUTPUTS:
        catalog[name] = MemoryDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(gold_judge=gold_judge), catalog)
    return catalog


@pytest.mark.parametrize("gold_judge", [True, False])
def test_the_node_runs_on_a_catalog_and_the_right_judge_decides(tokenizer, sft_model, gold_judge):
    catalog = _run(_inputs(tokenizer, sft_model), gold_judge)
    summary, table = catalog.load("evaluation_summary"), catalog.load("evaluation_samples")
    judges = ["gold", "audit"] if gold_judge else ["audit"]
    assert summary["judge"] == judges[0] and list(summary["judges"]) == judges
    assert summary["n_prompts"] == 3 and summary["audit_judge"]["heldout_pairs"] == 2
    assert set(summary["policies"]) == {"sft", "ppo", "dpo", "best_of_n"}
    assert set(judges) | {"rm"} <= set(table.columns) and ("gold" in table.columns) == gold_judge
    assert isinstance(catalog.load("evaluation_plot"), plt.Figure)
    assert "rm_disagreement" not in table.columns  # one reward model: nothing to disagree


def test_an_ensembles_disagreement_is_reported_per_reply_and_per_policy(tokenizer, sft_model):
    members = []
    for seed in (1, 2):  # two untrained score heads: members that disagree
        torch.manual_seed(seed)
        model, rm_tokenizer = build_reward_backbone("sft", sft_model, tokenizer)
        members.append(RewardModel(model.eval(), rm_tokenizer, TINY_LLAMA.prompt_template,
                                   TINY_LLAMA.response_prefix, 16, 16))
    ensemble = RewardEnsemble(tuple(members), uncertainty_penalty=0.5)
    catalog = _run(_inputs(tokenizer, sft_model) | {"reward_model": ensemble}, gold_judge=True)
    summary, table = catalog.load("evaluation_summary"), catalog.load("evaluation_samples")

    prompts, responses = table["prompt"].tolist(), table["response"].tolist()
    scores = torch.stack([m.score(prompts, responses) for m in members])  # (2, N)
    expected = (scores[0] - scores[1]).abs() / 2  # the population std of two
    np.testing.assert_allclose(table["rm_disagreement"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert expected.max() > 0
    for policy, rows in table.groupby("policy"):
        assert summary["policies"][policy]["rm_disagreement"] == pytest.approx(rows["rm_disagreement"].mean())
    np.testing.assert_allclose(table["rm"], ensemble.score(prompts, responses).numpy(), rtol=1e-5, atol=1e-6)
