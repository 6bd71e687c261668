"""The dpo pipeline: its wiring, and a Kedro session run in the ``test`` environment.

The run's upstream is the real data stages; the SFT model and tokenizer are a tiny
untrained pair saved through the catalog, so this tests DPO, not SFT's training.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from kedro.framework.session import KedroSession

from alignops.models import ModelConfig, build_causal_lm, build_tokenizer
from alignops.pipeline_registry import create_stage
from alignops.pipelines.dpo import create_pipeline
from tests.helpers import run_kedro

LOGGED_EVERY_STEP = {"loss/dpo", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


def test_pipeline_wiring():
    pipeline = create_pipeline()
    assert create_stage("dpo").nodes == create_pipeline().nodes
    assert sorted(n.name for n in pipeline.nodes) == ["plot_dpo_curves", "train_dpo"]
    assert pipeline.inputs() == {
        "sft_model",
        "tokenizer",
        "preferences_train",
        "preferences_heldout",
        "dpo_checkpoints",
        "params:model",
        "params:dpo",
    }
    assert pipeline.outputs() == {"dpo_model", "dpo_curves"}
    assert "dpo_history" in pipeline.all_outputs()


@pytest.mark.slow
def test_dpo_runs_in_the_test_environment(project_after):
    project_copy = project_after("data_validation")
    with KedroSession.create(project_path=project_copy, env="test") as session:
        catalog = session.load_context().catalog
        config = ModelConfig(**catalog.load("params:model"))
        pairs = catalog.load("preferences_train")
        texts = config.format_prompts(pairs["prompt"].tolist()) + pairs["chosen"].tolist() + pairs["rejected"].tolist()
        tokenizer = build_tokenizer(config, texts)
        torch.manual_seed(0)
        catalog.save("tokenizer", tokenizer)
        catalog.save("sft_model", build_causal_lm(config, tokenizer))
    run_kedro(project_copy, env="test", pipeline_names=["dpo"])

    with KedroSession.create(project_path=project_copy, env="test") as session:
        catalog = session.load_context().catalog
        sft_model, dpo_model = catalog.load("sft_model"), catalog.load("dpo_model")
        params = catalog.load("params:dpo")
    history = json.loads((project_copy / "data/08_reporting/dpo_history.json").read_text())
    steps = [row for row in history if "loss/dpo" in row]
    assert [row["step"] for row in steps] == list(range(1, params["max_steps"] + 1))
    assert all(LOGGED_EVERY_STEP <= row.keys() and math.isfinite(row["loss/dpo"]) for row in steps)
    assert any("eval/dpo/rewards/accuracies" in row for row in history)
    sft_weights = sft_model.state_dict()
    assert any(not torch.equal(w, sft_weights[name]) for name, w in dpo_model.state_dict().items())
    assert (project_copy / f"data/06_models/checkpoints/dpo/step_{params['checkpoint_every']:08d}/step.json").is_file()
