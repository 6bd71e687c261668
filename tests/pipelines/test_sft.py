"""sft as Kedro runs it: wiring, and a real run in the `test` environment on the tiny world."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignops.models import generate
from alignops.catalog.models import HFModelDataset, HFTokenizerDataset
from alignops.pipeline_registry import STAGES
from alignops.pipelines.sft import create_pipeline
from tests.conftest import run_kedro


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and two pytest-xdist workers with two
    threads each on a 2-core machine stall on OpenMP barriers (seconds per step, not ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pipeline_wires_the_contracted_inputs_and_outputs():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {
        "sft_demonstrations", "validated_preferences", "params:model", "params:sft", "sft_checkpoints",
    }
    assert pipeline.outputs() == {"sft_model", "sft_curves"}
    assert "sft_history" in pipeline.all_outputs()
    assert "sft" in STAGES


@pytest.mark.slow
def test_sft_runs_in_the_test_environment_and_writes_model_tokenizer_and_history(project_copy):
    run_kedro(project_copy, env="test", pipeline_names=["data_generation", "ingestion", "data_validation", "sft"])

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
