"""The audit judge: wiring, a run on the tiny world's audit split, and a pretrained classifier as judge."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, LlamaConfig

from alignops.catalog.reward_model import RewardModelDataset
from alignops.pipeline_registry import create_stage
from alignops.pipelines.audit_judge import create_pipeline
from alignops.pipelines.audit_judge.nodes import train
from tests.helpers import REPO_ROOT, make_tiny_policy, make_tiny_tokenizer, run_kedro


def test_pipeline_wiring_and_registration():
    pipeline = create_pipeline()
    assert sorted(n.name for n in pipeline.nodes) == ["plot_audit_judge_curves", "train_audit_judge"]
    assert "preferences_audit" in pipeline.inputs() and "preferences_train" not in pipeline.inputs()
    assert pipeline.outputs() == {"audit_judge", "audit_judge_curves"}
    assert create_stage("audit_judge").nodes == create_pipeline().nodes


@pytest.mark.slow
def test_the_audit_judge_trains_on_the_audit_split_under_its_own_metric_names(project_after):
    project = project_after("sft")
    run_kedro(project, env="test", pipeline_names=["audit_judge"])
    judge = RewardModelDataset(filepath=str(project / "data/06_models/audit_judge")).load()
    scores = judge.score(["where is my order"], ["it ships today"])
    assert torch.isfinite(scores).all()
    history = json.loads((project / "data/08_reporting/audit_judge_history.json").read_text())
    names = {name for row in history for name in row} - {"step"}
    assert {"loss/audit_judge", "audit_judge/accuracy", "eval/audit_judge/accuracy", "audit_judge/norm_std"} <= names
    assert not any(part == "reward" for name in names for part in name.split("/"))  # no clash with reward/ in MLflow
    assert (project / "data/08_reporting/curves/audit_judge.png").stat().st_size > 10_000


def test_a_pretrained_classifier_judges_as_it_is_with_no_audit_split(tmp_path):
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    classifier = AutoModelForSequenceClassification.from_config(config)
    classifier.save_pretrained(str(tmp_path / "classifier"))
    tokenizer.save_pretrained(str(tmp_path / "classifier"))

    heldout = pd.DataFrame({"prompt": ["where is my order", "reset my password"], "chosen": ["yes", "help"],
                            "rejected": ["no", "close"]})
    base = yaml.safe_load((REPO_ROOT / "conf/base/parameters_reward.yml").read_text())["reward"]
    model = {**yaml.safe_load((REPO_ROOT / "conf/base/parameters_model.yml").read_text())["model"],
             "max_prompt_tokens": 16, "max_response_tokens": 16}
    judge, rows = train(
        heldout.iloc[0:0], heldout, make_tiny_policy(tokenizer), tokenizer, str(tmp_path / "checkpoints"),
        model, {"max_new_tokens": 6}, {**base, "norm_samples": 8},
        {"base": str(tmp_path / "classifier"), "train": False},
    )
    assert all(torch.equal(t, judge.model.state_dict()[k]) for k, t in classifier.state_dict().items())
    assert judge.std > 0 and [set(row) - {"step"} for row in rows] == [
        {"audit_judge/norm_mean", "audit_judge/norm_std", "audit_judge/norm_eos_share"}
    ]
