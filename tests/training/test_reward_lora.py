"""LoRA (peft) for the reward model on a tiny Llama: only the trunk's adapters and the score head
train, the stage hands back a plain merged reward model that scores as the adapted one did, the
catalog saves and loads it, the saved adapters (with the head) load back onto the base, and a
rerun resumes from a LoRA checkpoint to the same model."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForSequenceClassification

from alignops.catalog.reward_model import RewardModelDataset
from alignops.models.reward import build_reward_backbone
from alignops.training import reward as reward_module
from alignops.training.checkpoints import CHECKPOINT_PREFIX, Checkpoints
from alignops.training.common import MetricHistory
from alignops.training.lora import ADAPTER_FOLDER
from alignops.training.reward import train_reward_model
from alignops.training.reward_config import RewardConfig
from tests.helpers import TINY_LLAMA, make_tiny_tokenizer

PROMPTS = ["reset my password", "where is my order", "refund the charge", "close my account"]
GOOD = ["thank you, I have done that for you", "happy to help, it is done now"]
BAD = ["go away", "no"]
MODEL = dataclasses.replace(TINY_LLAMA, max_response_tokens=24)
LORA = RewardConfig(learning_rate=3e-3, batch_size=4, max_steps=4, warmup_steps=1, log_every=1, eval_every=2,
                    checkpoint_every=2, norm_samples=0, lora={"r": 4, "alpha": 8})


def _pairs():
    import pandas as pd

    from alignops.preferences.schema import as_canonical

    rows = [{"prompt": p, "chosen": GOOD[i % 2], "rejected": BAD[(i // 2) % 2], "item_id": f"item-{i}",
             "margin": None} for i, p in enumerate(PROMPTS * 3)]
    return as_canonical(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def tokenizer():
    """Overrides conftest's: this module's words (``sft_model`` is conftest's tiny Llama on it)."""
    return make_tiny_tokenizer(PROMPTS + GOOD + BAD)


def _score(reward_model):
    responses = [GOOD[0], BAD[0], GOOD[1], BAD[1]]
    return reward_model.score(PROMPTS, responses, batch_size=3, normalise=False)


@pytest.fixture(scope="module")
def trained(sft_model, tokenizer, tmp_path_factory):
    """(merged reward model, the adapted model just before merging, its checkpoint folder, sft weights before)."""
    before = copy.deepcopy(sft_model.state_dict())
    checkpoints = tmp_path_factory.mktemp("reward_lora")
    seen = []
    original = reward_module.merged
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(reward_module, "merged",
                        lambda model, *a, **k: seen.append(copy.deepcopy(model)) or original(model, *a, **k))
    try:
        reward_model = train_reward_model(sft_model, tokenizer, _pairs(), None, MODEL, LORA, MetricHistory(),
                                          checkpoint_dir=str(checkpoints))
    finally:
        monkeypatch.undo()
    return reward_model, seen[0], checkpoints, before


def test_a_reward_lora_setting_is_checked_when_the_config_is_built():
    with pytest.raises(TypeError):
        RewardConfig(lora={"rank": 8})
    with pytest.raises(ValueError, match="lora"):
        RewardConfig(lora={"r": 0})


def test_only_the_trunks_adapters_and_the_head_train(trained, sft_model):
    reward_model, adapted, _, before = trained
    assert isinstance(adapted, PeftModel)
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or ".score.modules_to_save." in name for name in trainable)
    assert any(".score.modules_to_save." in name for name in trainable)  # the new head trains whole
    # after training, the frozen trunk is still the SFT model's, weight for weight
    trunk = {name.removeprefix("base_model.model.model.").replace("base_layer.", ""): tensor
             for name, tensor in adapted.state_dict().items()
             if name.startswith("base_model.model.model.") and "lora_" not in name}
    sft_trunk = {name.removeprefix("model."): tensor for name, tensor in sft_model.state_dict().items()
                 if name.startswith("model.")}
    assert trunk.keys() == sft_trunk.keys()
    for name, tensor in trunk.items():
        assert torch.equal(tensor, sft_trunk[name]), name
    assert all(torch.equal(tensor, before[name]) for name, tensor in sft_model.state_dict().items())
    # what trained moved: the adapters' B (0 at the start) and the head (from its fresh copy)
    head = adapted.base_model.model.score
    assert not torch.equal(head.modules_to_save["default"].weight, head.original_module.weight)
    assert any(p.abs().sum() > 0 for name, p in adapted.named_parameters() if "lora_B" in name)


def test_the_merged_reward_model_scores_as_the_adapted_one(trained):
    reward_model, adapted, _, _ = trained
    assert type(reward_model.model) is LlamaForSequenceClassification  # plain: the catalog, PPO, the registry
    assert not any("lora" in name or "modules_to_save" in name for name, _ in reward_model.model.named_parameters())
    merged_scores = _score(reward_model)
    adapted_scores = _score(dataclasses.replace(reward_model, model=adapted))
    assert torch.allclose(merged_scores, adapted_scores, atol=1e-5), (merged_scores, adapted_scores)
    assert merged_scores.std() > 0


def test_the_merged_reward_model_saves_and_loads_through_the_catalog(trained, tmp_path):
    reward_model, _, _, _ = trained
    dataset = RewardModelDataset(filepath=str(tmp_path / "reward"))
    dataset.save(reward_model)
    loaded = dataset.load()
    assert type(loaded.model) is LlamaForSequenceClassification
    assert torch.allclose(_score(loaded), _score(reward_model), atol=1e-6)


def test_the_saved_adapters_load_back_onto_the_base(trained, sft_model, tokenizer):
    reward_model, _, checkpoints, _ = trained
    assert (checkpoints / ADAPTER_FOLDER / "adapter_model.safetensors").is_file()
    torch.manual_seed(123)  # another head: the trained one comes with the adapters
    base, _ = build_reward_backbone("sft", sft_model, tokenizer)
    again = PeftModel.from_pretrained(base, str(checkpoints / ADAPTER_FOLDER)).merge_and_unload()
    assert type(again) is LlamaForSequenceClassification
    for (name, a), b in zip(reward_model.model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_rerun_resumes_from_a_lora_checkpoint_to_the_same_model(trained, sft_model, tokenizer, tmp_path,
                                                                  monkeypatch):
    reward_model, _, checkpoints, _ = trained
    resumed_dir = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, resumed_dir)
    newest = sorted(resumed_dir.glob(f"{CHECKPOINT_PREFIX}*"))
    assert [p.name for p in newest] == [f"{CHECKPOINT_PREFIX}{2:08d}", f"{CHECKPOINT_PREFIX}{4:08d}"]
    shutil.rmtree(newest[-1])  # as if killed between steps 2 and 4
    shutil.rmtree(resumed_dir / ADAPTER_FOLDER)
    resumed = []
    original = Checkpoints.resume
    monkeypatch.setattr(Checkpoints, "resume", lambda self: resumed.append(original(self)) or resumed[-1])
    again = train_reward_model(sft_model, tokenizer, _pairs(), None, MODEL, LORA, MetricHistory(),
                               checkpoint_dir=str(resumed_dir))
    assert resumed[0] is not None and resumed[0].step == 2  # same configuration, data and model: resumed
    assert (resumed_dir / ADAPTER_FOLDER / "adapter_model.safetensors").is_file()
    for (name, a), b in zip(reward_model.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
