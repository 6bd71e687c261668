"""LoRA adapters (peft) for SFT and DPO on a tiny model: only adapters train, DPO's reference is
the base model, the stage hands back a merged plain model that generates, and the saved
adapters load back onto the base to the same model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from alignops.models import generate
from alignops.training import dpo as dpo_module
from alignops.training.common import MetricHistory
from alignops.training.dpo import PreferencePairs, reference_logprobs, tokenize_pairs, train_dpo
from alignops.training.dpo_config import DPOConfig
from alignops.training.lora import ADAPTER_FOLDER, LoRAConfig, lora_config
from alignops.training.sft import train_sft
from alignops.training.sft_config import SFTConfig
from tests.helpers import TINY_LLAMA, make_tiny_tokenizer

PROMPTS = ["Where is my order?", "How do I reset my password?", "Can I get a refund?", "What time do you open?"]
CHOSEN = ["It ships today.", "Use the reset link.", "Yes, within 30 days.", "We open at nine."]
REJECTED = ["no", "go away", "ask someone else", "no, not now"]
LORA = {"r": 4, "alpha": 8}


@pytest.fixture(scope="module")
def tokenizer():
    texts = TINY_LLAMA.format_prompts(PROMPTS) + [TINY_LLAMA.response_prefix + t for t in CHOSEN + REJECTED]
    return make_tiny_tokenizer(texts)


def test_a_lora_setting_is_checked_when_the_stage_config_is_built():
    assert lora_config(None) is None
    listed = lora_config({"r": 8, "target_modules": ["q_proj", "v_proj"]})
    assert listed == LoRAConfig(r=8, target_modules=("q_proj", "v_proj"))
    with pytest.raises(TypeError):
        SFTConfig(lora={"rank": 8})
    with pytest.raises(ValueError, match="lora"):
        DPOConfig(lora={"r": 0})


def test_sft_with_lora_returns_a_merged_model_and_adapters_that_load_back(tokenizer, tmp_path):
    config = SFTConfig(learning_rate=3e-3, batch_size=2, max_steps=4, warmup_steps=0, eval_fraction=0.0, lora=LORA)
    model = train_sft(tokenizer, PROMPTS, CHOSEN, TINY_LLAMA, config, MetricHistory(), checkpoint_dir=str(tmp_path))
    assert type(model) is LlamaForCausalLM  # merged: what the catalog saves and the registry registers
    assert not any("lora" in name for name, _ in model.named_parameters())
    out = generate(model, tokenizer, [TINY_LLAMA.format_prompts(PROMPTS[:1])[0]], max_new_tokens=4, seed=0)
    assert out.response_ids.shape[0] == 1

    # the adapters alone, back on the base (same seed, same init) and merged, give the same model
    from accelerate.utils import set_seed

    from alignops.models.loading import build_causal_lm

    set_seed(config.seed)
    base = build_causal_lm(TINY_LLAMA, tokenizer)
    assert (tmp_path / ADAPTER_FOLDER / "adapter_model.safetensors").is_file()
    again = PeftModel.from_pretrained(base, str(tmp_path / ADAPTER_FOLDER)).merge_and_unload()
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_dpo_with_lora_takes_the_base_model_as_reference_and_trains_only_adapters(tokenizer, monkeypatch):
    torch.manual_seed(0)
    sft_model = LlamaForCausalLM(_tiny_config(tokenizer))
    pairs = PreferencePairs(PROMPTS * 2, CHOSEN * 2, REJECTED * 2)
    config = DPOConfig(learning_rate=3e-3, batch_size=4, max_steps=3, warmup_steps=0, ref_batch_size=3, lora=LORA)

    seen = []
    original = dpo_module.reference_logprobs
    monkeypatch.setattr(dpo_module, "reference_logprobs", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    policy = train_dpo(copy.deepcopy(sft_model), tokenizer, pairs, None, TINY_LLAMA, config, MetricHistory())

    rows = tokenize_pairs(tokenizer, pairs, TINY_LLAMA)
    base_logps = reference_logprobs(sft_model, rows, 6, config.average_logprobs, torch.device("cpu"))
    assert torch.allclose(seen[0], base_logps, atol=1e-6)  # the reference is the base model
    assert type(policy) is LlamaForCausalLM
    changed = [n for (n, a), b in zip(policy.state_dict().items(), sft_model.state_dict().values(), strict=True)
               if not torch.equal(a, b)]
    assert changed and all("proj" in n for n in changed)  # merged adapter updates land on the linear layers only
    plain = train_dpo(copy.deepcopy(sft_model), tokenizer, pairs, None, TINY_LLAMA,
                      dataclasses.replace(config, lora=None), MetricHistory())
    assert any("embed" in n for (n, a), b in zip(plain.state_dict().items(), sft_model.state_dict().values(),
                                                     strict=True) if not torch.equal(a, b))


def _tiny_config(tokenizer):
    from alignops.models.loading import scratch_llama_config

    return scratch_llama_config(TINY_LLAMA, tokenizer)
