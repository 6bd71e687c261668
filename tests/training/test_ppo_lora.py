"""PPO with LoRA adapters and with gradient checkpointing, on a tiny Llama: only the adapters
(and the value side) train, the KL reference is the SFT model (the policy with its adapters
disabled), the stage returns the merged plain model and its snapshots are merged too, a run
resumes; checkpointing changes memory, not results, and leaves the rollouts in eval mode."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from alignops.core import selective_log_softmax
from alignops.models import generate
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardModel, build_reward_backbone
from alignops.models.value_head import PolicyWithCritic, PolicyWithValueHead, response_forward
from alignops.training import ppo as ppo_module
from alignops.training.common import MetricHistory
from alignops.training.lora import ADAPTER_FOLDER, merged
from alignops.training.ppo import train_ppo
from alignops.training.ppo_config import PPOConfig
from alignops.training.snapshots import Snapshots
from tests.helpers import TINY_LLAMA, CountingScorer

PROMPTS = ["please reset my password", "where is my order", "refund the charge", "close my account"]
LORA = {"r": 4, "alpha": 8}
TINY = PPOConfig(
    steps=3,
    rollout_batch_size=8,
    minibatch_size=4,
    ppo_epochs=2,
    learning_rate=3e-3,
    max_new_tokens=8,
    missing_eos_score=None,
    sample_every=1,
    num_samples=2,
    snapshot_every=0,
    resume="never",
    lora=LORA,
)
GENERATION = GenerationConfig(temperature=0.7)
WALL_CLOCK = ("_per_s", "elapsed_s")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _run(sft_model, tokenizer, checkpoint_dir=None, scorer=None, **overrides):
    history = MetricHistory()
    config = dataclasses.replace(TINY, **overrides)
    result = train_ppo(sft_model, tokenizer, scorer or CountingScorer(), PROMPTS, TINY_LLAMA, config, GENERATION,
                       history, checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir))
    return result, history


def _recording(monkeypatch, critic: str = "value_head") -> list[torch.nn.Module]:
    """The wrappers (policy and its critic) that ``train_ppo`` builds, as it builds them."""
    built = []
    build = ppo_module.CRITICS[critic]

    def recording(policy, tokenizer, reward_model):
        built.append(build(policy, tokenizer, reward_model))
        built[-1].trainable_at_start = [n for n, p in built[-1].named_parameters() if p.requires_grad]
        return built[-1]

    monkeypatch.setitem(ppo_module.CRITICS, critic, recording)
    return built


def test_ppo_with_lora_trains_only_the_adapters_and_returns_the_merged_model(
    sft_model, tokenizer, tmp_path, monkeypatch
):
    built = _recording(monkeypatch)
    before = _state(sft_model)
    result, history = _run(sft_model, tokenizer, tmp_path / "checkpoints")

    (wrapper,) = built
    assert wrapper.trainable_at_start and all(
        "lora_" in name or name.startswith("value_head.") for name in wrapper.trainable_at_start
    )
    assert torch.count_nonzero(wrapper.value_head.weight) > 0  # the value head trains fully
    assert all(torch.isfinite(torch.tensor(row["loss/policy"])) for row in history.rows)
    assert all(torch.equal(before[name], t) for name, t in sft_model.state_dict().items())

    # The stage's model: plain, merged, different from the SFT model on the adapted layers only.
    policy = result.policy
    assert type(policy) is LlamaForCausalLM and not any("lora" in name for name in policy.state_dict())
    changed = [name for name, t in policy.state_dict().items() if not torch.equal(before[name], t)]
    assert changed and all("proj" in name for name in changed)
    # The saved adapters moved from their start (B = 0), and on the untouched SFT weights they
    # are the stage's model: the base weights did not train.
    adapters = PeftModel.from_pretrained(copy.deepcopy(sft_model), str(tmp_path / "checkpoints" / ADAPTER_FOLDER))
    assert any("lora_B" in n and torch.count_nonzero(p) > 0 for n, p in adapters.named_parameters())
    again = adapters.merge_and_unload().state_dict()
    for name, tensor in policy.state_dict().items():
        torch.testing.assert_close(tensor, again[name], atol=1e-6, rtol=0)

    out = generate(policy, tokenizer, PROMPTS[:2], max_new_tokens=4, seed=0)
    assert out.response_ids.shape[0] == 2
    policy.save_pretrained(tmp_path / "policy")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert all(torch.equal(reloaded.state_dict()[name], t) for name, t in policy.state_dict().items())


def test_with_lora_the_kl_reference_is_the_sft_model_and_no_copy_of_it(sft_model, tokenizer, monkeypatch):
    built = _recording(monkeypatch)
    rollouts, references = [], []
    rollout_forward, forward = ppo_module._rollout_forward, ppo_module.response_forward

    def spying_rollout_forward(policy, reference, rollout, widths, *args):
        outputs = rollout_forward(policy, reference, rollout, widths, *args)
        rollouts.append((rollout, outputs))
        return outputs

    def spying_forward(model, *args, **kwargs):  # only the reference is called directly
        references.append(model)
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(ppo_module, "_rollout_forward", spying_rollout_forward)
    monkeypatch.setattr(ppo_module, "response_forward", spying_forward)
    _run(sft_model, tokenizer)

    (wrapper,) = built
    assert references and all(model is wrapper.policy for model in references)  # the policy itself
    assert len(rollouts) == TINY.steps
    for step, (rollout, (logprobs, ref_logprobs, _, _)) in enumerate(rollouts, start=1):
        mask = rollout["response_mask"].bool()
        with torch.no_grad():
            sft_logits = response_forward(sft_model, **rollout)[0] / GENERATION.temperature
        sft_logprobs = selective_log_softmax(sft_logits, rollout["response_ids"])
        torch.testing.assert_close(ref_logprobs[mask], sft_logprobs[mask], atol=1e-5, rtol=1e-5)
        if step > 1:  # by then the adapters have moved the policy away from its reference
            assert (logprobs[mask] - ref_logprobs[mask]).abs().max() > 1e-3


def test_with_lora_snapshots_are_the_merged_policy_and_leave_training_alone(
    sft_model, tokenizer, tmp_path, monkeypatch
):
    expected = {}
    save = Snapshots.save

    def recording_save(self, step, model):
        expected[step] = merged(copy.deepcopy(model)).state_dict()  # what the policy is at this step
        save(self, step, model)

    monkeypatch.setattr(Snapshots, "save", recording_save)
    result, history = _run(sft_model, tokenizer, tmp_path / "checkpoints", snapshot_every=1, checkpoint_every=0)
    assert sorted(result.snapshots) == sorted(expected) == [1, 2]

    sft = _state(sft_model)
    for step, folder in result.snapshots.items():
        snapshot = AutoModelForCausalLM.from_pretrained(folder)
        assert type(snapshot) is LlamaForCausalLM
        state = snapshot.state_dict()
        assert state.keys() == expected[step].keys()
        for name, tensor in state.items():
            torch.testing.assert_close(tensor, expected[step][name], atol=1e-6, rtol=0)
        if step > 1:
            assert any(not torch.equal(state[name], sft[name]) for name in sft)

    monkeypatch.setattr(Snapshots, "save", save)
    unsnapped, plain_history = _run(sft_model, tokenizer, checkpoint_every=0)  # no snapshots written
    assert all(torch.equal(t, unsnapped.policy.state_dict()[name]) for name, t in result.policy.state_dict().items())
    assert [row["loss/policy"] for row in history.rows] == [row["loss/policy"] for row in plain_history.rows]


def _steady(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith(WALL_CLOCK)} for row in rows]


def test_a_lora_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does(
    sft_model, tokenizer, tmp_path, caplog
):
    folder = tmp_path / "checkpoints"
    config = {"steps": 4, "checkpoint_every": 2, "resume": "auto"}
    whole, history = _run(sft_model, tokenizer, folder, **config)
    shutil.rmtree(folder / "step_00000004")  # as if killed after step 3
    with caplog.at_level("INFO"):
        resumed, resumed_history = _run(sft_model, tokenizer, folder, **config)
    assert f"ppo: resuming from {folder / 'step_00000002'} (step 2)" in caplog.text
    assert all(torch.equal(t, resumed.policy.state_dict()[name]) for name, t in whole.policy.state_dict().items())
    assert _steady(resumed_history.rows) == _steady(history.rows)
    assert resumed.samples == whole.samples


@pytest.fixture(scope="module")
def reward_model(sft_model, tokenizer) -> RewardModel:
    """A reward model built from the SFT model as the pipeline builds it, its score head random."""
    torch.manual_seed(1)
    model, rm_tokenizer = build_reward_backbone("sft", sft_model, tokenizer)
    return RewardModel(model.eval(), rm_tokenizer, TINY_LLAMA.prompt_template, TINY_LLAMA.response_prefix, 16, 16)


def test_with_lora_a_reward_model_critic_still_trains_fully(sft_model, tokenizer, reward_model, monkeypatch):
    built = _recording(monkeypatch, "reward_model")
    reward_before = _state(reward_model.model)
    _run(sft_model, tokenizer, scorer=reward_model, steps=2, critic="reward_model")

    (wrapper,) = built
    assert isinstance(wrapper, PolicyWithCritic)
    critic_names = {f"critic.{name}" for name, _ in wrapper.critic.named_parameters()}
    trainable = set(wrapper.trainable_at_start)
    assert critic_names <= trainable and all("lora_" in name for name in trainable - critic_names)
    assert any(not torch.equal(reward_before[name], t) for name, t in wrapper.critic.state_dict().items())
    assert all(torch.equal(reward_before[name], t) for name, t in reward_model.model.state_dict().items())


# --- gradient checkpointing -----------------------------------------------------------------------


def _dropout_llama(tokenizer) -> LlamaForCausalLM:
    """The tiny Llama with attention dropout configured (a float its attention reads in train
    mode only): the update in train mode must switch it off."""
    from alignops.models.loading import scratch_llama_config

    config = scratch_llama_config(TINY_LLAMA, tokenizer)
    config.attention_dropout = 0.3
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("lora", [None, {**LORA, "dropout": 0.1}], ids=["full", "lora"])  # peft's nn.Dropout
def test_gradient_checkpointing_changes_memory_not_results(tokenizer, monkeypatch, lora):
    sft_model = _dropout_llama(tokenizer)
    layer_calls, sampled_in_train_mode = {}, []
    build, sample = ppo_module.CRITICS["value_head"], ppo_module.sample_responses

    def counting(policy, tokenizer, reward_model):
        run = len(layer_calls)
        layer_calls[run] = 0
        mlp = policy.get_decoder().layers[0].mlp  # called inside the checkpointed layer: again in the backward
        mlp.register_forward_pre_hook(lambda *_: layer_calls.__setitem__(run, layer_calls[run] + 1))
        return build(policy, tokenizer, reward_model)

    def spying_sample(model, *args, **kwargs):
        sampled_in_train_mode.append(model.training)
        return sample(model, *args, **kwargs)

    monkeypatch.setitem(ppo_module.CRITICS, "value_head", counting)
    monkeypatch.setattr(ppo_module, "sample_responses", spying_sample)
    plain, plain_history = _run(sft_model, tokenizer, lora=lora)
    checkpointed, history = _run(sft_model, tokenizer, lora=lora, gradient_checkpointing=True)

    assert checkpointed.policy.is_gradient_checkpointing and not sft_model.is_gradient_checkpointing
    # Each update forward's layers ran again in the backward pass: one extra call per minibatch.
    updates = TINY.steps * TINY.ppo_epochs * (TINY.rollout_batch_size // TINY.minibatch_size)
    assert layer_calls[1] - layer_calls[0] == updates
    assert not any(sampled_in_train_mode)  # rollouts sample in eval mode, with the KV cache
    for name in ("loss/policy", "loss/value", "policy/approxkl", "objective/kl"):
        assert [r[name] for r in history.rows] == pytest.approx([r[name] for r in plain_history.rows], abs=1e-6)
    for (name, a), b in zip(plain.policy.named_parameters(), checkpointed.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_the_config_checks_its_adapters():
    assert PPOConfig().lora is None and PPOConfig().gradient_checkpointing is False
    with pytest.raises(TypeError):
        PPOConfig(lora={"rank": 4})
    with pytest.raises(ValueError, match="lora"):
        PPOConfig(lora={"r": 0})


def test_without_lora_the_value_head_policy_trains_every_weight(sft_model, tokenizer, monkeypatch):
    built = _recording(monkeypatch)
    _run(sft_model, tokenizer, steps=1, lora=None)
    (wrapper,) = built
    assert isinstance(wrapper, PolicyWithValueHead)
    assert set(wrapper.trainable_at_start) == {name for name, _ in wrapper.named_parameters()}
