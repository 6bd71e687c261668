"""sft as Kedro runs it: wiring, and a real run in the `test` environment on the tiny world."""

from __future__ import annotations

import json
import math

import pytest

from alignops.catalog.models import HFModelDataset, HFTokenizerDataset
from alignops.models import generate
from alignops.pipeline_registry import STAGES
from alignops.pipelines.sft import create_pipeline
from tests.helpers import run_kedro


def test_pipeline_wires_the_contracted_inputs_and_outputs():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {
        "sft_demonstrations", "validated_preferences", "params:model", "params:sft", "sft_checkpoints",
    }
    assert pipeline.outputs() == {"sft_model", "sft_curves"}
    assert "sft_history" in pipeline.all_outputs()
    assert "sft" in STAGES


@pytest.mark.slow
def test_sft_runs_in_the_test_environment_and_writes_model_tokenizer_and_history(project_after):
    project_copy = project_after("data_validation")
    run_kedro(project_copy, env="test", pipeline_names=["sft"])

    models = project_copy / "data" / "06_models"
    assert (models / "sft" / "model.safetensors").is_file()
    assert not list((models / "sft").glob("*.bin"))
    history = json.loads((project_copy / "data" / "08_reporting" / "sft_history.json").read_text())
    losses = [row["loss/sft"] for row in history if "loss/sft" in row]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert any("eval/sft/perplexity" in row for row in history)
    assert sorted(p.name for p in (models / "checkpoints" / "sft").iterdir()) == ["step_00000002", "step_00000004"]

    # what the next stages do: load both from the catalog's folders and sample
    tokenizer = HFTokenizerDataset(filepath=str(models / "tokenizer")).load()
    model = HFModelDataset(filepath=str(models / "sft")).load()
    assert model.config.hidden_size == 32  # conf/test's tiny model, not base's
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    out = generate(model, tokenizer, ["\n\nHuman: Where is my order?\n\nAssistant:"], max_new_tokens=5, seed=0)
    assert out.response_ids.shape[0] == 1
