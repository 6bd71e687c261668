"""The reward pipeline: wiring, and a Kedro session run on the tiny world after SFT."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from alignops.catalog.reward_model import RewardModelDataset
from alignops.pipeline_registry import create_stage
from alignops.pipelines.reward import create_pipeline
from tests.helpers import run_kedro

INPUTS = {
    "preferences_train",
    "preferences_heldout",
    "sft_model",
    "tokenizer",
    "reward_checkpoints",
    "params:model",
    "params:generation",
    "params:reward",
}


def test_pipeline_wiring_and_registration():
    pipeline = create_pipeline()
    assert sorted(n.name for n in pipeline.nodes) == ["plot_reward_curves", "train_reward"]
    assert pipeline.inputs() == INPUTS
    assert pipeline.outputs() == {"reward_model", "reward_curves"}
    assert "reward_history" in pipeline.all_outputs()
    assert create_stage("reward").nodes == create_pipeline().nodes


@pytest.mark.slow
def test_reward_pipeline_runs_in_the_test_env(project_after):
    project_copy = project_after("sft")
    run_kedro(project_copy, env="test", pipeline_names=["reward"])
    folder = project_copy / "data/06_models/reward"
    # conf/test's ensemble: two member folders, each a safetensors classifier with its tokenizer
    assert sorted(p.name for p in folder.iterdir()) == ["member-0", "member-1", "reward_model.json"]
    for member in ("member-0", "member-1"):
        names = {p.name for p in (folder / member).iterdir()}
        assert {"model.safetensors", "reward_model.json", "tokenizer.json", "config.json"} <= names
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]

    history = json.loads((project_copy / "data/08_reporting/reward_history.json").read_text())
    train_rows = [r for r in history if "loss/reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]  # conf/test: 4 steps, a row each
    assert all(math.isfinite(r["loss/reward"]) and 0.0 <= r["reward/accuracy"] <= 1.0 for r in train_rows)
    assert [r["step"] for r in history if "eval/reward/accuracy" in r] == [2, 4]
    norm = next(r for r in history if "reward/norm_std" in r)
    assert norm["step"] == 4 and norm["reward/norm_std"] > 0
    assert [r["step"] for r in history if "member_1/loss/reward" in r] == [1, 2, 3, 4]  # each member's own curve
    for member in ("member-0", "member-1"):
        checkpoints = sorted(p.name for p in (project_copy / "data/06_models/checkpoints/reward" / member).iterdir())
        assert checkpoints == ["step_00000002", "step_00000004"]

    reward_model = RewardModelDataset(filepath=str(folder)).load()
    assert reward_model.std == pytest.approx(norm["reward/norm_std"])
    heldout = pd.read_parquet(project_copy / "data/05_model_input/preferences_heldout.parquet")
    scores = reward_model.score(heldout["prompt"].tolist(), heldout["chosen"].tolist(), batch_size=16)
    assert scores.shape == (len(heldout),) and bool(scores.isfinite().all())
