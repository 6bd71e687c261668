"""The ppo pipeline: wiring, prompt collection, a run on the real catalog entries, and a Kedro session run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from transformers import LlamaForCausalLM

from alignops.catalog.models import HFModelDataset
from alignops.pipelines.ppo import create_pipeline
from alignops.pipelines.ppo.nodes import collect_prompts
from tests.helpers import PPO_LOGGED_EVERY_STEP, REPO_ROOT, TINY_LLAMA, CountingScorer, base_catalog, run_kedro

BASE_PPO = yaml.safe_load((REPO_ROOT / "conf/base/parameters_ppo.yml").read_text())["ppo"]
TEST_PPO = {**BASE_PPO, **yaml.safe_load((REPO_ROOT / "conf/test/parameters_ppo.yml").read_text())["ppo"]}
OUTPUTS = {"ppo_model", "ppo_curves", "ppo_samples", "ppo_snapshots"}


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    preferences = pd.DataFrame({"prompt": ["reset my password", "where is my order", "reset my password"]})
    demonstrations = pd.DataFrame({"prompt": ["where is my order", "refund the charge"],
                                   "response": ["it ships today", "refunded"]})
    return preferences, demonstrations


def test_pipeline_wiring():
    pipeline = create_pipeline()
    assert sorted(n.name for n in pipeline.nodes) == ["collect_ppo_prompts", "plot_ppo_curves", "train_ppo"]
    assert pipeline.inputs() == {
        "sft_model",
        "tokenizer",
        "reward_model",
        "preferences_train",
        "sft_demonstrations",
        "ppo_checkpoints",
        "params:model",
        "params:generation",
        "params:ppo",
    }
    assert pipeline.outputs() == OUTPUTS


def test_prompts_are_the_distinct_training_prompts_with_or_without_demonstrations():
    preferences, demonstrations = _frames()
    with_demos = collect_prompts(preferences, demonstrations, {"demonstration_prompts": True})
    assert with_demos == ["reset my password", "where is my order", "refund the charge"]
    assert collect_prompts(preferences, demonstrations, {"demonstration_prompts": False}) == [
        "reset my password",
        "where is my order",
    ]


def _catalog(root: Path, sft_model, tokenizer, **ppo) -> DataCatalog:
    """The project's ppo catalog entries (and the stage factories) rooted at ``root``; the
    upstream stages' outputs in memory."""
    catalog = base_catalog(root, "stages", "ppo")
    preferences, demonstrations = _frames()
    model_params = dataclasses.asdict(TINY_LLAMA)
    for name, value in {
        "sft_model": sft_model,
        "tokenizer": tokenizer,
        "reward_model": CountingScorer(),
        "preferences_train": preferences,
        "sft_demonstrations": demonstrations,
        "params:model": model_params,
        "params:generation": {"max_new_tokens": 12},
        "params:ppo": TEST_PPO | ppo,
    }.items():
        catalog[name] = MemoryDataset(value, copy_mode="assign")
    return catalog


@pytest.mark.parametrize("ptx_coef", [0.0, 0.5])
def test_pipeline_saves_a_loadable_policy_its_history_and_samples(tmp_path, sft_model, tokenizer, ptx_coef):
    SequentialRunner().run(create_pipeline(), _catalog(tmp_path, sft_model, tokenizer, ptx_coef=ptx_coef))

    policy = HFModelDataset(filepath=str(tmp_path / "data/06_models/ppo")).load()
    assert type(policy) is type(sft_model)
    before = sft_model.state_dict()
    assert any(not torch.equal(tensor, before[name]) for name, tensor in policy.state_dict().items())
    history = json.loads((tmp_path / "data/08_reporting/ppo_history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, TEST_PPO["steps"] + 1))
    assert all(PPO_LOGGED_EVERY_STEP <= set(row) for row in history)
    assert all(("ptx/nll" in row) == (ptx_coef > 0) for row in history)  # the demonstrations' SFT loss
    samples = pd.read_json(tmp_path / "data/08_reporting/ppo_samples.jsonl", lines=True)
    assert list(samples.columns) == ["step", "prompt", "response", "score"]
    assert len(samples) == TEST_PPO["steps"] * TEST_PPO["num_samples"]
    checkpoints = sorted((tmp_path / "data/06_models/checkpoints/ppo").glob("step_*/step.json"))
    assert [json.loads(c.read_text())["stage"] for c in checkpoints] == ["ppo"]


@pytest.mark.slow
def test_ppo_runs_in_the_test_environment_after_its_upstream_stages(project_after):
    project_copy = project_after("reward")
    run_kedro(project_copy, env="test", pipeline_names=["ppo"])

    policy = HFModelDataset(filepath=str(project_copy / "data/06_models/ppo")).load()
    assert isinstance(policy, LlamaForCausalLM)  # the test env's scratch model, without a value head
    history = json.loads((project_copy / "data/08_reporting/ppo_history.json").read_text())
    assert len(history) == TEST_PPO["steps"]
    assert all(torch.isfinite(torch.tensor(row["loss/policy"])) for row in history)
    assert (project_copy / "data/08_reporting/ppo_samples.jsonl").stat().st_size > 0
