"""The PPO loop on a tiny Llama: it learns, logs, stops on NaN, repeats itself, leaves the SFT model alone."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from alignops.models.chat import parse_transcript
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardEnsemble, RewardModel, build_reward_backbone, sequence_rewards
from alignops.models.scoring import response_logits
from alignops.models.value_head import CriticError, PolicyWithCritic, PolicyWithValueHead
from alignops.training import ppo as ppo_module
from alignops.training.common import MetricHistory, NonFiniteLossError
from alignops.training.ppo import PromptBatches, train_ppo
from alignops.training.ppo_config import PPOConfig
from tests.helpers import (
    PPO_LOGGED_EVERY_STEP,
    TINY_LLAMA,
    CountingScorer,
    make_chat_tokenizer,
    make_tiny_policy,
    make_tiny_tokenizer,
)

PROMPTS = ["please reset my password", "where is my order", "refund the charge", "close my account"]
# Small and quick; tests override what they exercise.
TINY = PPOConfig(
    steps=2,
    rollout_batch_size=8,
    minibatch_size=4,
    ppo_epochs=2,
    learning_rate=3e-3,
    max_new_tokens=8,
    missing_eos_score=None,
    sample_every=1,
    num_samples=2,
)


class NanOnCall(CountingScorer):
    """Scores normally, except NaN on call ``bad_call``."""

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.bad_call = bad_call

    def score(self, prompts, responses, batch_size=64, normalise=True) -> torch.Tensor:
        scores = super().score(prompts, responses)
        return torch.full_like(scores, float("nan")) if self.calls == self.bad_call else scores


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _run(sft_model, tokenizer, scorer=None, temperature=0.7, demonstrations=None, **overrides):
    history = MetricHistory()
    config = dataclasses.replace(TINY, **overrides)
    generation = GenerationConfig(temperature=temperature)
    result = train_ppo(
        sft_model, tokenizer, scorer or CountingScorer(), PROMPTS, TINY_LLAMA, config, generation, history,
        demonstrations=demonstrations,
    )
    return result, history


def test_a_few_steps_give_finite_losses_and_change_the_policy_not_the_sft_model(sft_model, tokenizer, tmp_path):
    before = _state(sft_model)
    result, history = _run(sft_model, tokenizer)

    for row in history.rows:
        for name in ("loss/policy", "loss/value", "objective/kl", "objective/scores", "policy/approxkl"):
            assert torch.isfinite(torch.tensor(row[name])), (name, row)
    after = result.policy.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert all(torch.equal(before[name], tensor) for name, tensor in sft_model.state_dict().items())

    # The saved policy is a plain causal LM: no value-head weights, loadable by from_pretrained.
    assert isinstance(result.policy, LlamaForCausalLM)
    assert not any("value_head" in name for name in after)
    result.policy.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(reloaded.state_dict()[name], tensor) for name, tensor in after.items())


def test_every_metric_is_logged_every_step_and_samples_are_rows(sft_model, tokenizer):
    result, history = _run(sft_model, tokenizer, steps=3, sample_every=2)
    assert [row["step"] for row in history.rows] == [1, 2, 3]
    for row in history.rows:
        assert PPO_LOGGED_EVERY_STEP <= set(row)
    assert history.rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert [s["step"] for s in result.samples] == [2, 2, 3, 3]  # every 2nd step and the last
    assert all(set(s) == {"step", "prompt", "response", "score"} and s["prompt"] in PROMPTS for s in result.samples)


def test_with_a_chat_template_rollout_prompts_are_the_templates_generation_prompt(monkeypatch):
    tokenizer = make_chat_tokenizer()
    prompts = [*PROMPTS[:3], "\n\nHuman: where is my order\n\nAssistant: close\n\nHuman: refund\n\nAssistant:"]
    rollouts = []

    def spying_sampler(*args, **kwargs):
        out = sample_responses(*args, **kwargs)
        rollouts.append((args[2], out))
        return out

    sample_responses = ppo_module.sample_responses
    monkeypatch.setattr(ppo_module, "sample_responses", spying_sampler)
    model_config = dataclasses.replace(TINY_LLAMA, max_position_embeddings=96, max_prompt_tokens=48)
    config = dataclasses.replace(TINY, steps=1)
    train_ppo(make_tiny_policy(tokenizer), tokenizer, CountingScorer(), prompts, model_config, config,
              GenerationConfig(), MetricHistory())
    (batch_prompts, out), = rollouts
    assert set(batch_prompts) == set(prompts)
    for row, prompt in enumerate(batch_prompts):
        expected = tokenizer.apply_chat_template(parse_transcript(prompt), add_generation_prompt=True)["input_ids"]
        assert out.query_ids[row][out.query_mask[row].bool()].tolist() == expected


def test_the_reference_stays_frozen(sft_model, tokenizer, monkeypatch):
    seen = []
    forward = ppo_module.response_forward

    def spying_forward(model, *args, **kwargs):  # only the reference is called directly
        seen.append((model, model.training, [p.requires_grad for p in model.parameters()]))
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(ppo_module, "response_forward", spying_forward)
    _run(sft_model, tokenizer)

    references = {id(model) for model, _, _ in seen}
    assert len(seen) >= 2 and len(references) == 1
    reference = seen[-1][0]
    assert reference is not sft_model
    assert not any(training or any(grads) for _, training, grads in seen)
    assert all(torch.equal(reference.state_dict()[n], t) for n, t in sft_model.state_dict().items())


def test_first_update_sees_the_rollout_log_probs_again(sft_model, tokenizer):
    # Same positions, no dropout, same temperature: before any real change the ratio is 1.
    _, history = _run(sft_model, tokenizer, steps=1, ppo_epochs=1, minibatch_size=8, learning_rate=1e-12)
    assert history.rows[0]["policy/approxkl"] < 1e-8
    assert history.rows[0]["policy/clipfrac"] == 0.0


def test_nan_loss_stops_with_the_stage_and_step(sft_model, tokenizer):
    with pytest.raises(NonFiniteLossError, match=r"ppo: .* at step 2"):
        _run(sft_model, tokenizer, scorer=NanOnCall(bad_call=2), steps=3)


def test_same_seed_same_weights_other_seed_other_weights(sft_model, tokenizer):
    first, history_a = _run(sft_model, tokenizer)
    second, history_b = _run(sft_model, tokenizer)
    third, _ = _run(sft_model, tokenizer, seed=1)
    a, b, c = (r.policy.state_dict() for r in (first, second, third))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)
    timing = {"ppo/episodes_per_s", "ppo/generation_tokens_per_s", "ppo/elapsed_s"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in history_a.rows + history_b.rows]
    assert strip[: len(history_a.rows)] == strip[len(history_a.rows) :]


def test_missing_eos_score_replaces_the_reward_models(sft_model, tokenizer):
    class Constant(CountingScorer):
        def score(self, prompts, responses, batch_size=64, normalise=True):
            return torch.ones(len(responses))

    _, history = _run(sft_model, tokenizer, scorer=Constant(), steps=1, missing_eos_score=-3.0, max_new_tokens=2)
    row = history.rows[0]
    assert row["ppo/eos_rate"] < 1.0  # two tokens rarely end a random model's reply
    assert row["objective/scores"] == pytest.approx(row["ppo/eos_rate"] - 3.0 * (1 - row["ppo/eos_rate"]))


def test_adaptive_controller_moves_the_kl_coefficient(sft_model, tokenizer):
    _, fixed = _run(sft_model, tokenizer, steps=3)
    _, adaptive = _run(sft_model, tokenizer, steps=3, kl_controller="adaptive", kl_target=100.0, kl_horizon=10.0)
    assert {row["objective/kl_coef"] for row in fixed.rows} == {TINY.kl_coef}
    coefs = [row["objective/kl_coef"] for row in adaptive.rows]
    assert coefs[0] == TINY.kl_coef and coefs[2] < coefs[1] < coefs[0]  # KL far below its target: β falls


def test_toy_reward_rises_over_twenty_steps(sft_model, tokenizer):
    # Reward = how often "e" appears; a random tiny policy must learn to write more of it.
    _, history = _run(
        sft_model, tokenizer, steps=20, rollout_batch_size=32, minibatch_size=8, kl_coef=0.01, temperature=1.0
    )
    scores = [row["objective/scores"] for row in history.rows]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 1.0, scores


def test_value_head_starts_at_zero_and_leaves_the_logits_alone(sft_model, tokenizer):
    policy = PolicyWithValueHead(sft_model)
    encoded = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    response_ids = torch.randint(0, TINY_LLAMA.vocab_size, (len(PROMPTS), 5))
    response_mask = torch.ones_like(response_ids)
    with torch.no_grad():
        logits, values = policy(encoded["input_ids"], encoded["attention_mask"], response_ids, response_mask)
        plain = response_logits(sft_model, encoded["input_ids"], encoded["attention_mask"], response_ids, response_mask)
    assert values.shape == response_ids.shape and torch.equal(values, torch.zeros_like(values))
    torch.testing.assert_close(logits, plain)


def test_prompt_batches_visit_every_prompt_before_repeating():
    batches = PromptBatches(10, 4, torch.Generator().manual_seed(0))
    seen = torch.cat([next(batches) for _ in range(5)])  # 20 = two passes
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_config_fails_loudly_on_bad_keys_and_values():
    with pytest.raises(TypeError):
        PPOConfig(learning_rte=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        PPOConfig(rollout_batch_size=10, minibatch_size=4)
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOConfig(kl_estimator="k9")
    with pytest.raises(ValueError, match="kl_controller"):
        PPOConfig(kl_controller="pid")
    with pytest.raises(ValueError, match="critic must be one of"):
        PPOConfig(critic="value_model")


@pytest.mark.parametrize("critic", ["value_head", "reward_model"])
def test_trimmed_rollout_forward_equals_the_full_width_pass(sft_model, tokenizer, reward_model, critic):
    """Chunks sorted by length and cut to their own widths change no number."""
    from alignops.core import selective_log_softmax
    from alignops.models.generation import generate
    from alignops.models.value_head import CRITICS, response_forward

    torch.manual_seed(0)
    policy = CRITICS[critic](sft_model, tokenizer, reward_model).eval()
    prompts = ["Hi", "Where is my order? It was due on May 3.", "refund please", "My password fails."] * 3
    out = generate(sft_model, tokenizer, prompts, max_new_tokens=12, temperature=1.0, seed=3)
    rollout = {k: getattr(out, k) for k in ppo_module.ROLLOUT_KEYS}
    assert out.response_mask.sum(1).unique().numel() > 1  # rows of several lengths, so trimming happens
    widths = torch.stack([out.query_mask.sum(1), out.response_mask.sum(1)], dim=1)
    trimmed = ppo_module._rollout_forward(policy, sft_model, rollout, widths, chunk=5, temperature=0.7)
    with torch.no_grad():
        logits, values = policy(**rollout)
        ref_logits = response_forward(sft_model, **rollout)[0]
    mask = out.response_mask.bool()
    full = (
        selective_log_softmax(logits / 0.7, out.response_ids),
        selective_log_softmax(ref_logits / 0.7, out.response_ids),
        values,
    )
    for got, want in zip(trimmed[:3], full, strict=False):
        torch.testing.assert_close(got[mask], want[mask].float(), atol=1e-5, rtol=1e-5)


def test_snapshots_are_the_policy_along_the_run_and_only_this_runs(sft_model, tokenizer, tmp_path):
    from alignops.catalog.models import HFModelSnapshots

    checkpoints = tmp_path / "checkpoints"
    config = dataclasses.replace(TINY, steps=5, snapshot_every=2, checkpoint_every=0, resume="never")
    result = train_ppo(
        sft_model, tokenizer, CountingScorer(), PROMPTS, TINY_LLAMA, config, GenerationConfig(), MetricHistory(),
        checkpoint_dir=str(checkpoints),
    )
    assert sorted(result.snapshots) == [2, 4]  # never the last step: that one is the stage's model

    catalog = HFModelSnapshots(path=str(tmp_path / "ppo_snapshots"))
    catalog.save({f"step_{step:06d}": str(folder) for step, folder in result.snapshots.items()})
    loaded = catalog.load()
    assert list(loaded) == ["step_000002", "step_000004"]
    first, second = (loaded[name]() for name in loaded)
    sft, final = _state(sft_model), result.policy.state_dict()
    for snapshot in (first, second):  # weights between the SFT model's and the final policy's
        state = snapshot.state_dict()
        assert any(not torch.equal(state[name], sft[name]) for name in sft)
        assert any(not torch.equal(state[name], final[name]) for name in final)

    # Another configuration's run removes these when it writes its first, and lists only its own.
    other = dataclasses.replace(config, steps=3, seed=1)
    rerun = train_ppo(
        sft_model, tokenizer, CountingScorer(), PROMPTS, TINY_LLAMA, other, GenerationConfig(), MetricHistory(),
        checkpoint_dir=str(checkpoints),
    )
    assert sorted(rerun.snapshots) == [2]
    assert sorted(p.name for p in (checkpoints / "snapshots").iterdir()) == ["step_00000002"]
    catalog.save({"step_000002": str(rerun.snapshots[2])})
    assert list(catalog.load()) == ["step_000002"]  # the earlier run's step 4 is gone
    with pytest.raises(ValueError, match="snapshot_every"):
        dataclasses.replace(TINY, snapshot_every=-1)


# --- critic: reward_model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model(sft_model, tokenizer) -> RewardModel:
    """A reward model built from the SFT model as the pipeline builds it (same tokenizer), its
    score head random: an untrained but non-constant critic to start from."""
    torch.manual_seed(1)
    model, rm_tokenizer = build_reward_backbone("sft", sft_model, tokenizer)
    return RewardModel(model.eval(), rm_tokenizer, TINY_LLAMA.prompt_template, TINY_LLAMA.response_prefix, 16, 16)


def _left_padded_queries_and_right_padded_responses(tokenizer):
    queries = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    replies = ["yes", "your refund is on its way", "no", "please reset the password here"]
    responses = tokenizer(replies, padding=True, padding_side="right", return_tensors="pt")
    return queries["input_ids"], queries["attention_mask"], responses["input_ids"], responses["attention_mask"]


def test_the_critic_starts_as_the_reward_models_score_of_each_prefix(sft_model, tokenizer, reward_model):
    """V_t, the value of the state before response token t, is at first what the reward model
    scores the prompt plus the first t response tokens (normalised, as PPO's scores are): TRL's
    value model from its reward model."""
    normalised = reward_model.with_normalisation(mean=0.5, std=2.0)
    policy = PolicyWithCritic.from_reward_model(sft_model, tokenizer, normalised)
    query_ids, query_mask, response_ids, response_mask = _left_padded_queries_and_right_padded_responses(tokenizer)
    assert response_mask.sum(1).unique().numel() > 1  # right padding inside the batch
    with torch.no_grad():
        logits, values = policy(query_ids, query_mask, response_ids, response_mask)  # (B, R, V), (B, R)
        plain = response_logits(sft_model, query_ids, query_mask, response_ids, response_mask)
        input_ids, attention_mask = torch.cat([query_ids, response_ids], 1), torch.cat([query_mask, response_mask], 1)
        width = query_ids.shape[1]
        prefix_scores = torch.stack(  # (B, R): the reward model on each prefix, one forward each
            [sequence_rewards(reward_model.model, input_ids[:, : width + t], attention_mask[:, : width + t])
             for t in range(response_ids.shape[1])],
            dim=1,
        )
    mask = response_mask.bool()
    torch.testing.assert_close(values[mask], (prefix_scores[mask] - 0.5) / 2.0, atol=1e-5, rtol=1e-5)
    assert values[mask].std() > 0
    torch.testing.assert_close(logits, plain)
    assert policy.critic is not reward_model.model
    # of an ensemble, the first member is the critic, read with that member's normalisation
    second = dataclasses.replace(reward_model, model=copy.deepcopy(reward_model.model))
    ensemble = RewardEnsemble((normalised, second), uncertainty_penalty=0.5, mean=-3.0, std=7.0)
    with torch.no_grad():
        _, ensemble_values = PolicyWithCritic.from_reward_model(sft_model, tokenizer, ensemble)(
            query_ids, query_mask, response_ids, response_mask
        )
    torch.testing.assert_close(ensemble_values[mask], values[mask])
    assert {id(p) for p in policy.value_parameters()} == {id(p) for p in policy.critic.parameters()}


def test_a_few_steps_with_a_reward_model_critic_train_policy_and_critic_not_the_reward_model(
    sft_model, tokenizer, reward_model, monkeypatch
):
    built = []

    def recording(policy, tokenizer, reward_model):
        wrapper = PolicyWithCritic.from_reward_model(policy, tokenizer, reward_model)
        built.append(wrapper)
        return wrapper

    monkeypatch.setitem(ppo_module.CRITICS, "reward_model", recording)
    reward_before = _state(reward_model.model)
    grads_before = [p.requires_grad for p in reward_model.model.parameters()]
    result, history = _run(sft_model, tokenizer, scorer=reward_model, steps=3, critic="reward_model")

    for row in history.rows:
        for name in ("loss/policy", "loss/value", "objective/scores", "val/explained_variance"):
            assert torch.isfinite(torch.tensor(row[name])), (name, row)
    (wrapper,) = built
    assert wrapper.policy is result.policy and not any("critic" in name for name in result.policy.state_dict())
    sft = _state(sft_model)
    assert any(not torch.equal(sft[name], t) for name, t in result.policy.state_dict().items())
    assert any(not torch.equal(reward_before[name], t) for name, t in wrapper.critic.state_dict().items())
    # The reward model that scored the rollouts is the one it was: same weights, same flags.
    assert all(torch.equal(reward_before[name], t) for name, t in reward_model.model.state_dict().items())
    assert [p.requires_grad for p in reward_model.model.parameters()] == grads_before


def test_a_reward_model_critic_needs_the_policys_tokenizer_and_a_per_token_head(sft_model, tokenizer, reward_model):
    other = make_tiny_tokenizer(["an entirely different world of words"] * 20)
    foreign = dataclasses.replace(reward_model, tokenizer=other)
    with pytest.raises(CriticError, match="tokenizer .* is not the policy's"):
        _run(sft_model, tokenizer, scorer=foreign, steps=1, critic="reward_model")
    with pytest.raises(CriticError, match="needs a RewardModel"):
        _run(sft_model, tokenizer, scorer=CountingScorer(), steps=1, critic="reward_model")

    from transformers import BertConfig, BertForSequenceClassification

    encoder = BertForSequenceClassification(BertConfig(
        vocab_size=TINY_LLAMA.vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, num_labels=1,
    ))
    with pytest.raises(CriticError, match="BertForSequenceClassification has none"):
        PolicyWithCritic.from_reward_model(sft_model, tokenizer, dataclasses.replace(reward_model, model=encoder))


# --- ptx: the SFT loss on the demonstrations ------------------------------------------------------

DEMOS = (["where is my order", "reset my password"], ["it ships today", "press forgot password"])


def test_demonstrations_are_laid_out_as_rollouts_and_decode_to_the_rendered_pair(tokenizer):
    from alignops.models.chat import Renderer
    from alignops.training.ptx import Demonstrations

    model_config = dataclasses.replace(TINY_LLAMA, max_prompt_tokens=40, max_response_tokens=24)  # nothing cut
    demos = Demonstrations(tokenizer, *DEMOS, model_config, seed=0)
    rows = demos.rows
    assert rows["query_mask"][:, -1].all() and rows["response_mask"][:, 0].all()  # left / right padded
    rendered, completions = Renderer.for_model(model_config, tokenizer).completions(*DEMOS)
    for i in range(len(DEMOS[0])):
        query = rows["query_ids"][i][rows["query_mask"][i].bool()]
        reply = rows["response_ids"][i][rows["response_mask"][i].bool()]
        assert tokenizer.decode(query) == rendered[i]
        assert reply[-1] == tokenizer.eos_token_id and tokenizer.decode(reply[:-1]) == completions[i]
    batch = demos.draw(5, torch.device("cpu"))  # with replacement, cut to the batch's own widths
    assert batch["query_ids"].shape[0] == 5 and batch["query_mask"][:, 0].any() and batch["response_mask"][:, -1].any()


def test_ptx_pulls_the_policy_towards_the_demonstrations_and_is_logged(sft_model, tokenizer):
    from alignops.models.value_head import PolicyWithValueHead
    from alignops.training.ptx import Demonstrations, ptx_loss

    def demo_nll(model) -> float:
        with torch.no_grad():
            demos = Demonstrations(tokenizer, *DEMOS, TINY_LLAMA, seed=0)
            return float(ptx_loss(PolicyWithValueHead(model), demos.rows))

    plain, _ = _run(sft_model, tokenizer, steps=4)
    mixed, history = _run(sft_model, tokenizer, steps=4, ptx_coef=5.0, demonstrations=DEMOS)
    assert demo_nll(mixed.policy) < demo_nll(plain.policy) - 0.1
    assert all(torch.isfinite(torch.tensor(row["ptx/nll"])) for row in history.rows)
    assert "ptx/nll" not in _run(sft_model, tokenizer, steps=1)[1].rows[0]
    with pytest.raises(ValueError, match="ptx_coef > 0 needs demonstrations"):
        _run(sft_model, tokenizer, steps=1, ptx_coef=0.1)
    with pytest.raises(ValueError, match="ptx_coef"):
        PPOConfig(ptx_coef=-1.0)
