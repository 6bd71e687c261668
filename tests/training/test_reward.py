"""The reward-model loop on a tiny Llama: it learns, logs, repeats itself, guards NaN, normalises."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardEnsemble, RewardModel, load_reward_model
from alignops.preferences.schema import as_canonical
from alignops.training import reward as reward_module
from alignops.training.common import MetricHistory, NonFiniteLossError
from alignops.training.reward import (
    collate_pairs,
    comparisons,
    normalise_reward_model,
    policy_samples,
    train_reward_model,
    train_reward_models,
)
from alignops.training.reward_config import RewardConfig
from tests.helpers import TINY_LLAMA, make_tiny_tokenizer

PROMPTS = ["reset my password", "where is my order", "refund the charge", "close my account", "change my plan"]
GOOD = ["thank you, I have done that for you", "happy to help, it is done now", "done, thank you for asking"]
BAD = ["go away", "no", "stop asking me things"]
MODEL = dataclasses.replace(TINY_LLAMA, max_response_tokens=24)
SAMPLING = GenerationConfig()
TINY = RewardConfig(
    learning_rate=3e-3,
    batch_size=8,
    max_steps=3,
    warmup_steps=1,
    log_every=1,
    eval_every=1,
    eval_batch_size=16,
    norm_samples=0,
)


def separable_pairs(n_items: int, seed: int = 0) -> pd.DataFrame:
    """K=3 rankings (3 pairs each, sharing replies) consistent with GOOD[0] > GOOD[1] > GOOD[2] > any BAD."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for item in range(n_items):
        prompt = PROMPTS[item % len(PROMPTS)]
        good = [GOOD[int(i)] for i in torch.randperm(len(GOOD), generator=g)[:2].sort().values]
        bad = BAD[int(torch.randint(len(BAD), (1,), generator=g))]
        ranked = [(good[0], 1), (good[1], 2), (bad, 3)]
        for a in range(3):
            for b in range(a + 1, 3):
                rows.append(
                    {
                        "prompt": prompt,
                        "chosen": ranked[a][0],
                        "rejected": ranked[b][0],
                        "item_id": f"item-{item}",
                        "chosen_rank": ranked[a][1],
                        "rejected_rank": ranked[b][1],
                        "margin": float(ranked[b][1] - ranked[a][1]),
                    }
                )
    return as_canonical(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def tokenizer():
    """Overrides conftest's: this module's words (``sft_model`` is conftest's tiny Llama on it)."""
    return make_tiny_tokenizer(PROMPTS + GOOD + BAD)


def _train(sft_model, tokenizer, config=TINY, train=None, heldout=None, **kwargs):
    history = MetricHistory()
    train = separable_pairs(12) if train is None else train
    heldout = separable_pairs(4, seed=1) if heldout is None else heldout
    reward_model = train_reward_model(sft_model, tokenizer, train, heldout, MODEL, config, history, **kwargs)
    return reward_model, history


def test_a_few_steps_give_finite_metrics_and_new_weights_and_leave_sft_alone(sft_model, tokenizer):
    sft_before = {k: v.clone() for k, v in sft_model.state_dict().items()}
    reward_model, history = _train(sft_model, tokenizer)

    train_rows = [r for r in history.rows if "loss/reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for row in train_rows:
        for name in ("loss/reward", "reward/accuracy", "reward/margin", "reward/lr", "reward/grad_norm"):
            assert math.isfinite(row[name]), name
    assert any("eval/reward/accuracy" in r for r in history.rows)
    trained = reward_model.model.base_model.state_dict()
    assert any(not torch.equal(t, sft_model.base_model.state_dict()[k]) for k, t in trained.items())
    for name, tensor in sft_model.state_dict().items():
        assert torch.equal(tensor, sft_before[name]), name
    assert reward_model.tokenizer is tokenizer and reward_model.prompt_template == MODEL.prompt_template


def test_accuracy_rises_on_a_separable_set(sft_model, tokenizer):
    config = dataclasses.replace(TINY, max_steps=30, eval_every=5, log_every=5, learning_rate=1e-2, warmup_steps=3)
    heldout = separable_pairs(6, seed=1)
    reward_model, history = _train(sft_model, tokenizer, config, heldout=heldout)
    evals = [r["eval/reward/accuracy"] for r in history.rows if "eval/reward/accuracy" in r]
    losses = [r["loss/reward"] for r in history.rows if "loss/reward" in r]
    assert evals[-1] == 1.0 and losses[-1] < losses[0] < 0.75
    chosen = reward_model.score(heldout["prompt"].tolist(), heldout["chosen"].tolist())
    rejected = reward_model.score(heldout["prompt"].tolist(), heldout["rejected"].tolist())
    assert (chosen > rejected).all()


def test_same_seed_same_reward_model(sft_model, tokenizer):
    prompts, replies = PROMPTS[:3], [GOOD[0], BAD[0], GOOD[2]]
    first, _ = _train(sft_model, tokenizer)
    second, _ = _train(sft_model, tokenizer)
    other, _ = _train(sft_model, tokenizer, dataclasses.replace(TINY, seed=1))
    assert torch.equal(first.score(prompts, replies), second.score(prompts, replies))
    assert not torch.equal(first.score(prompts, replies), other.score(prompts, replies))


def test_margin_raises_the_loss_of_the_same_first_batch(sft_model, tokenizer):
    first_loss = {}
    for scale in (0.0, 1.0):
        _, history = _train(sft_model, tokenizer, dataclasses.replace(TINY, max_steps=1, margin_scale=scale))
        first_loss[scale] = history.rows[0]["loss/reward"]
    assert first_loss[1.0] > first_loss[0.0] + 0.5  # margins of 1-2 push -log σ(gap - m) up by ~m


def test_a_nan_loss_stops_the_run(sft_model, tokenizer, monkeypatch):
    def nan_loss(r_chosen, r_rejected, margin=None):
        loss = (r_chosen - r_rejected).mean() * float("nan")
        return loss, {
            k: loss.detach()
            for k in ("loss/reward", "reward/accuracy", "reward/margin", "reward/chosen", "reward/rejected")
        }

    monkeypatch.setattr(reward_module, "bradley_terry_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="reward: non-finite loss .* step 0"):
        _train(sft_model, tokenizer)


def test_checkpoints_keep_the_newest(sft_model, tokenizer, tmp_path):
    config = dataclasses.replace(TINY, max_steps=4, checkpoint_every=2, keep_checkpoints=1)
    _train(sft_model, tokenizer, config, checkpoint_dir=str(tmp_path))
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["step_00000004"]
    assert (tmp_path / "step_00000004" / "step.json").is_file()


def test_normalisation_centres_and_scales_the_policy_samples(sft_model, tokenizer):
    reward_model, _ = _train(sft_model, tokenizer)
    config = dataclasses.replace(TINY, norm_samples=12, norm_max_new_tokens=6, norm_batch_size=5)
    history = MetricHistory()
    normalised = normalise_reward_model(
        reward_model, sft_model, tokenizer, PROMPTS * 2, MODEL, config, SAMPLING, history, 3
    )
    picked, samples = policy_samples(sft_model, tokenizer, PROMPTS * 2, MODEL, config, SAMPLING)
    assert len(picked) == 12 and set(picked) == set(PROMPTS)  # distinct prompts, cycled
    scores = normalised.score(picked, samples.texts)
    assert abs(float(scores.mean())) < 1e-4 and abs(float(scores.std()) - 1.0) < 1e-4
    assert history.rows[-1]["step"] == 3 and history.rows[-1]["reward/norm_std"] == pytest.approx(normalised.std)
    off = normalise_reward_model(normalised, sft_model, tokenizer, PROMPTS, MODEL, TINY, SAMPLING, history)
    assert (off.mean, off.std) == (0.0, 1.0)


def test_comparisons_tokenise_each_reply_once_and_batches_map_back(tokenizer, sft_model):
    reward_model, _ = _train(sft_model, tokenizer, dataclasses.replace(TINY, max_steps=1))
    table = separable_pairs(4)
    table.loc[0, "item_id"] = pd.NA  # a pair without a labelling act is a group of its own
    table.loc[1, "margin"] = pd.NA
    data = comparisons(reward_model, table, margin_scale=2.0)
    assert len(data) == len(table) and data.replies["input_ids"].shape[0] < 2 * len(table)
    assert data.margin[1] == 0.0 and data.margin[2] == 2.0 * table.loc[2, "margin"]
    assert len(set(data.group.tolist())) == 5 and int((data.group == data.group[0]).sum()) == 1

    batch = collate_pairs(data, [5, 2, 7])
    replies = table["chosen"].tolist() + table["rejected"].tolist()
    reference = reward_model.tokenize(table["prompt"].tolist() * 2, replies)
    rows = torch.tensor([5, 2, 7, 5 + len(table), 2 + len(table), 7 + len(table)])
    ids = batch["input_ids"][batch["inverse"]]  # (6, T)
    width = ids.shape[1]
    assert torch.equal(ids, reference["input_ids"][rows][:, :width])
    assert int(batch["input_ids"].shape[0]) <= 6


def test_config_rejects_bad_keys_and_values():  # tests/test_config.py checks it against the YAML
    with pytest.raises(TypeError):
        RewardConfig(learning_rat=1e-3)
    for bad in (
        {"learning_rate": 0},
        {"epochs": 0},
        {"schedule": "step"},
        {"norm_samples": 1},
        {"margin_scale": -1.0},
        {"mixed_precision": "fp8"},
        {"max_steps": 0},
        {"ensemble_size": 0},
        {"uncertainty_penalty": -0.1},
    ):
        with pytest.raises(ValueError):
            RewardConfig(**bad)


def _save_classifier(folder, tokenizer, num_labels: int = 1, seed: int = 0):
    """A one-output Llama sequence classifier from 'elsewhere': weights and tokenizer, no reward_model.json."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_a_reward_model_from_elsewhere_is_used_as_it_is_and_normalised_on_sft_samples(sft_model, tokenizer, tmp_path):
    from alignops.training.reward import pretrained_reward_model

    path = _save_classifier(tmp_path / "classifier", tokenizer)
    config = dataclasses.replace(TINY, base=str(path), train=False, norm_samples=12, norm_max_new_tokens=6)
    raw = pretrained_reward_model(str(path), MODEL)
    assert not (path / "reward_model.json").exists() and (raw.mean, raw.std) == (0.0, 1.0)
    history = MetricHistory()
    normalised = normalise_reward_model(raw, sft_model, tokenizer, PROMPTS, MODEL, config, SAMPLING, history)
    picked, samples = policy_samples(sft_model, tokenizer, PROMPTS, MODEL, config, SAMPLING)
    scores = normalised.score(picked, samples.texts)
    assert abs(float(scores.mean())) < 1e-4 and abs(float(scores.std()) - 1.0) < 1e-4
    # the weights are the classifier's own: nothing was fitted
    fresh = pretrained_reward_model(str(path), MODEL)
    for name, tensor in fresh.model.state_dict().items():
        assert torch.equal(tensor, normalised.model.state_dict()[name]), name


def test_a_classifier_with_more_than_one_output_is_refused(tokenizer, tmp_path):
    from alignops.training.reward import pretrained_reward_model

    path = _save_classifier(tmp_path / "two_labels", tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="2 outputs"):
        pretrained_reward_model(str(path), MODEL)
    with pytest.raises(ValueError, match="reward.base"):
        RewardConfig(train=False)


def test_gradient_checkpointing_changes_memory_not_results(sft_model, tokenizer):
    plain, plain_history = _train(sft_model, tokenizer)
    checkpointed, history = _train(sft_model, tokenizer, dataclasses.replace(TINY, gradient_checkpointing=True))
    assert checkpointed.model.is_gradient_checkpointing
    rows = [r["loss/reward"] for r in history.rows if "loss/reward" in r]
    assert rows == pytest.approx([r["loss/reward"] for r in plain_history.rows if "loss/reward" in r])
    for (name, a), b in zip(plain.model.named_parameters(), checkpointed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


ENSEMBLE = dataclasses.replace(TINY, ensemble_size=3, uncertainty_penalty=0.5)


@pytest.fixture(scope="module")
def ensemble(sft_model, tokenizer, tmp_path_factory):
    """Three members of the TINY recipe, checkpointed; and the history they logged."""
    folder = tmp_path_factory.mktemp("ensemble_checkpoints")
    history = MetricHistory()
    trained = train_reward_models(
        sft_model, tokenizer, separable_pairs(12), separable_pairs(4, seed=1), MODEL, ENSEMBLE, history,
        checkpoint_dir=str(folder),
    )
    return trained, history, folder


def test_an_ensemble_is_the_recipe_from_successive_seeds_scored_as_mean_less_spread(ensemble, sft_model, tokenizer):
    trained, history, folder = ensemble
    assert isinstance(trained, RewardEnsemble) and len(trained.members) == 3 and trained.uncertainty_penalty == 0.5
    # member 1 is exactly the single recipe with seed + 1; members differ from each other
    alone, _ = _train(sft_model, tokenizer, dataclasses.replace(TINY, seed=1))
    for name, tensor in alone.model.state_dict().items():
        assert torch.equal(tensor, trained.members[1].model.state_dict()[name]), name
    head = [m.model.score.weight for m in trained.members]
    assert not torch.equal(head[0], head[1]) and not torch.equal(head[1], head[2])
    # each member has its own checkpoints and its own curves (the first under the usual names)
    assert sorted(p.name for p in folder.iterdir()) == ["member-0", "member-1", "member-2"]
    names = {name for row in history.rows for name in row}
    assert {"loss/reward", "member_1/loss/reward", "member_2/eval/reward/accuracy"} <= names
    assert not any(name.startswith("member_0/") for name in names)

    replies = GOOD + BAD
    prompts = PROMPTS[: len(replies)] + PROMPTS[: len(replies) - len(PROMPTS)]
    each = torch.stack([m.score(prompts, replies) for m in trained.members])  # (3, N)
    assert torch.equal(trained.member_scores(prompts, replies), each)
    expected = each.mean(0) - 0.5 * each.std(0, correction=0)
    assert torch.allclose(trained.score(prompts, replies, normalise=False), expected)
    plain = dataclasses.replace(trained, uncertainty_penalty=0.0)
    assert torch.allclose(plain.score(prompts, replies, normalise=False), each.mean(0))
    with pytest.raises(ValueError, match="at least two"):
        RewardEnsemble(trained.members[:1])


def test_an_ensemble_is_normalised_member_by_member_then_as_a_whole(ensemble, sft_model, tokenizer, monkeypatch):
    trained, _, _ = ensemble
    config = dataclasses.replace(ENSEMBLE, norm_samples=12, norm_max_new_tokens=6, norm_batch_size=5)
    history = MetricHistory()
    passes = []
    score = RewardModel.score
    monkeypatch.setattr(RewardModel, "score", lambda self, *a, **k: passes.append(self) or score(self, *a, **k))
    normalised = normalise_reward_model(trained, sft_model, tokenizer, PROMPTS, MODEL, config, SAMPLING, history, 3)
    assert len(passes) == len(trained.members)  # each member scores the samples once
    monkeypatch.undo()
    picked, samples = policy_samples(sft_model, tokenizer, PROMPTS, MODEL, config, SAMPLING)
    for member in normalised.members:  # one unit for every member, so their spread means something
        scores = member.score(picked, samples.texts)
        assert abs(float(scores.mean())) < 1e-4 and abs(float(scores.std()) - 1.0) < 1e-4
    scores = normalised.score(picked, samples.texts)
    assert abs(float(scores.mean())) < 1e-4 and abs(float(scores.std()) - 1.0) < 1e-4
    raw = normalised.score(picked, samples.texts, normalise=False)  # the constants are its moments, to the bit
    assert (normalised.mean, normalised.std) == (float(raw.mean()), float(raw.std()))
    row = history.rows[-1]
    assert row["step"] == 3 and row["reward/norm_std"] == pytest.approx(normalised.std)
    spread = normalised.member_scores(picked, samples.texts).std(0, correction=0).mean()
    assert row["reward/norm_member_std"] == pytest.approx(float(spread)) and row["reward/norm_member_std"] > 0


def test_an_ensemble_saves_loads_and_crosses_the_launcher_as_one_folder(ensemble, tmp_path):
    from alignops.catalog.reward_model import RewardModelDataset
    from alignops.training.handoff import model_digest, read_value, write_value

    trained = ensemble[0].with_normalisation(0.25, 2.0)
    dataset = RewardModelDataset(filepath=str(tmp_path / "reward"))
    dataset.save(trained)
    saved = sorted(p.name for p in (tmp_path / "reward").iterdir())
    assert saved == ["member-0", "member-1", "member-2", "reward_model.json"]
    handed = tmp_path / "handoff" / "reward_model"
    meta = write_value(handed, trained)
    for loaded in (dataset.load(), load_reward_model(tmp_path / "reward"), read_value(handed, meta)):
        assert isinstance(loaded, RewardEnsemble)
        assert (loaded.mean, loaded.std, loaded.uncertainty_penalty) == (0.25, 2.0, 0.5)
        assert torch.equal(loaded.score(PROMPTS, GOOD[:2] + BAD[:3]), trained.score(PROMPTS, GOOD[:2] + BAD[:3]))
        assert model_digest(loaded) == model_digest(trained)
    assert model_digest(trained) != model_digest(trained.members[0])  # every member counts, not the first alone
    assert isinstance(load_reward_model(tmp_path / "reward" / "member-1"), RewardModel)
