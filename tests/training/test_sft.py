"""The SFT loop and what it shares with every loop (schedule, guards, checkpoints, history),
on a tiny Llama: it learns, logs, repeats itself, stops on NaN and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from accelerate.utils import set_seed

from alignops.models import ModelConfig, build_causal_lm, build_tokenizer
from alignops.models.chat import parse_transcript
from alignops.training import sft as training_sft
from alignops.training.accelerator import make_accelerator
from alignops.training.common import MetricHistory, NonFiniteLossError, check_finite
from alignops.training.optim import decay_parameter_groups, lr_multiplier, make_scheduler
from alignops.training.sft import train_sft
from alignops.training.sft_config import SFTConfig
from tests.helpers import make_chat_tokenizer

PROMPTS = [
    "Where is my order #4411?",
    "Please reset my password.",
    "I was charged twice.",
    "Cancel my plan.",
    "The app crashes on start.",
    "How do I get an invoice?",
    "My watch will not charge.",
    "Unsubscribe me from emails.",
]
RESPONSES = [
    "Order #4411 ships today; the tracking link is in your email.",
    "Use Forgot password on the login page; the link lasts one hour.",
    "The second charge is a hold and disappears within three days.",
    "Under Plan, choose Cancel; you keep access until the period ends.",
    "Update the app, then restart your phone.",
    "Invoices are under Orders, Download invoice.",
    "Charge it for thirty minutes with the original cable.",
    "Use the Unsubscribe link at the bottom of any email.",
]
TINY = ModelConfig(
    vocab_size=320,
    tokenizer_min_frequency=1,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=96,
    max_prompt_tokens=32,
    max_response_tokens=48,
)
QUICK = SFTConfig(
    learning_rate=3e-3,
    batch_size=2,
    max_steps=6,
    warmup_steps=1,
    log_every=1,
    eval_every=3,
    eval_fraction=0.25,
    eval_batch_size=4,
)
LOGGED = {"loss/sft", "sft/lr", "sft/grad_norm", "sft/tokens_per_s", "sft/epoch"}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TINY, TINY.format_prompts(PROMPTS) + RESPONSES)


def _train(tokenizer, config=QUICK, log=None, checkpoint_dir=None):
    return train_sft(tokenizer, PROMPTS, RESPONSES, TINY, config, log or MetricHistory(), checkpoint_dir)


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_a_few_steps_log_finite_metrics_and_change_every_parameter(tokenizer):
    set_seed(QUICK.seed)
    initial = _weights(build_causal_lm(TINY, tokenizer))  # the loop's init: same seed, same build
    history = MetricHistory()
    model = _train(tokenizer, log=history)

    train_rows = [r for r in history.rows if "loss/sft" in r]
    eval_rows = [r for r in history.rows if "eval/sft/loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert all(LOGGED <= set(r) for r in train_rows)
    assert [r["step"] for r in eval_rows] == [3, 6]
    assert all(math.isfinite(v) for r in history.rows for v in r.values())
    assert eval_rows[-1]["eval/sft/perplexity"] == pytest.approx(math.exp(eval_rows[-1]["eval/sft/loss"]))
    # the rate each update used: step 1 ran at the first warm-up rate
    assert train_rows[0]["sft/lr"] == pytest.approx(QUICK.learning_rate * lr_multiplier(0, 1, 6))
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), initial[n])]
    assert not unchanged


def test_with_a_chat_template_sft_trains_on_the_templated_conversations(monkeypatch):
    tokenizer = make_chat_tokenizer(PROMPTS + RESPONSES)
    prompts = [*PROMPTS[:6], "\n\nHuman: Cancel my plan.\n\nAssistant: Done.\n\nHuman: Thanks.\n\nAssistant:"]
    responses = RESPONSES[:7]
    seen = []

    def spying_loss(logits, input_ids, completion_mask):
        seen.append((input_ids.detach().cpu(), completion_mask.detach().cpu()))
        return sft_loss(logits, input_ids, completion_mask)

    sft_loss = training_sft.sft_loss
    monkeypatch.setattr(training_sft, "sft_loss", spying_loss)
    config = dataclasses.replace(QUICK, batch_size=8, max_steps=1, eval_fraction=0.0, packing=False)
    history = MetricHistory()
    train_sft(tokenizer, prompts, responses, TINY, config, history)

    expected = set()
    for prompt, response in zip(prompts, responses, strict=True):
        messages = parse_transcript(prompt)
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        whole = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}])["input_ids"]
        assert whole[: len(head)] == head and len(head) <= TINY.max_prompt_tokens
        expected.add((tuple(whole), (0,) * len(head) + (1,) * (len(whole) - len(head))))
    rows = set()
    for ids, mask in zip(*seen[0], strict=True):  # the one step's batch holds every demonstration
        n = int((ids != tokenizer.pad_token_id).sum())
        rows.add((tuple(ids[:n].tolist()), tuple(mask[:n].tolist())))
    assert rows == expected  # BOS once, the template's EOS ends every reply, nothing appended
    assert all(math.isfinite(r["loss/sft"]) for r in history.rows if "loss/sft" in r)


def test_loss_falls_on_a_repeated_tiny_batch(tokenizer):
    config = dataclasses.replace(
        QUICK,
        learning_rate=1e-2,
        batch_size=8,
        max_steps=40,
        warmup_steps=0,
        schedule="constant",
        eval_fraction=0.0,
        packing=False,
    )
    history = MetricHistory()
    _train(tokenizer, config, history)
    losses = [r["loss/sft"] for r in history.rows]
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_accumulation_counts_optimiser_steps(tokenizer):
    history = MetricHistory()
    _train(tokenizer, dataclasses.replace(QUICK, grad_accum=2, max_steps=3, eval_fraction=0.0), history)
    assert [r["step"] for r in history.rows] == [1, 2, 3]


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tokenizer):
    first, second = _weights(_train(tokenizer)), _weights(_train(tokenizer))
    other = _weights(_train(tokenizer, dataclasses.replace(QUICK, seed=1)))
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_gradient_checkpointing_changes_memory_not_results(tokenizer):
    """Recomputing activations in the backward pass gives the same losses and weights."""
    plain = MetricHistory()
    first = _weights(_train(tokenizer, log=plain))
    checkpointed = MetricHistory()
    model = _train(tokenizer, dataclasses.replace(QUICK, gradient_checkpointing=True), checkpointed)
    assert model.is_gradient_checkpointing
    assert [r.get("loss/sft") for r in checkpointed.rows] == pytest.approx([r.get("loss/sft") for r in plain.rows])
    second = _weights(model)
    assert all(torch.allclose(first[n], second[n], atol=1e-6) for n in first)


def test_bf16_autocast_runs_unchanged(tokenizer):
    history = MetricHistory()
    model = _train(tokenizer, dataclasses.replace(QUICK, mixed_precision="bf16", max_steps=2), history)
    assert all(math.isfinite(r["loss/sft"]) for r in history.rows if "loss/sft" in r)
    assert next(model.parameters()).dtype == torch.float32  # autocast, not bf16 weights


def test_a_diverging_run_stops_naming_the_stage_and_step(tokenizer):
    diverging = dataclasses.replace(QUICK, learning_rate=1e30, warmup_steps=0, schedule="constant", max_steps=20)
    with pytest.raises(NonFiniteLossError, match=r"^sft: non-finite loss .* at step [1-9]"):
        _train(tokenizer, diverging)


def test_checkpoints_hold_the_state_a_resume_needs(tokenizer, tmp_path):
    config = dataclasses.replace(QUICK, max_steps=4, checkpoint_every=2, keep_checkpoints=1)
    model = _train(tokenizer, config, checkpoint_dir=str(tmp_path))

    folder = tmp_path / "step_00000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004"]  # the older one was pruned
    record = json.loads((folder / "step.json").read_text())
    assert record["step"] == 4 and record["stage"] == "sft" and len(record["fingerprint"]) == 64
    assert [row["step"] for row in record["history"]] == [1, 2, 3, 3, 4, 4]  # held-out rows at 3 and 4
    files = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in files and "optimizer.bin" in files
    assert not {f for f in files if f.startswith("pytorch_model")}

    # resume: same objects, prepared and registered in the same order, other weights
    accelerator = make_accelerator("no", 1, seed=123)
    fresh = build_causal_lm(TINY, tokenizer)
    optimizer = torch.optim.AdamW(decay_parameter_groups(fresh, 0.1), lr=1e-3)
    fresh, optimizer = accelerator.prepare(fresh, optimizer)
    scheduler = make_scheduler(optimizer, "cosine", 1, 4)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.load_state(str(folder))
    restored = _weights(fresh)
    assert all(torch.equal(p.detach(), restored[n]) for n, p in model.named_parameters())
    assert scheduler.last_epoch == 4
    assert optimizer.state_dict()["state"]  # Adam moments came back too


def test_lr_warms_up_then_decays_to_zero():
    warm = [lr_multiplier(s, 4, 20, "cosine") for s in range(4)]
    assert warm == sorted(warm) and warm[-1] < 1.0
    assert lr_multiplier(4, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(20, 4, 20, "cosine") == pytest.approx(0.0)
    assert lr_multiplier(12, 4, 20, "linear") == pytest.approx(0.5)
    assert lr_multiplier(15, 4, 20, "constant") == 1.0


def test_check_finite_passes_numbers_and_stops_nan_and_inf():
    check_finite(torch.tensor(1.5), "reward", 3)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteLossError, match="reward.*step 7"):
            check_finite(torch.tensor(bad), "reward", 7)


def test_metric_history_keeps_rows_and_forwards_them():
    forwarded = []
    history = MetricHistory(sink=lambda metrics, step: forwarded.append((step, metrics)))
    history({"loss/sft": torch.tensor(2.0)}, 1)
    history({"eval/sft/loss": 1.5}, 2)
    assert history.rows == [{"step": 1, "loss/sft": 2.0}, {"step": 2, "eval/sft/loss": 1.5}]
    assert forwarded == [(1, {"loss/sft": 2.0}), (2, {"eval/sft/loss": 1.5})]
    json.dumps(history.rows)  # JSON-ready for the catalog


def test_sft_config_rejects_bad_values():
    with pytest.raises(TypeError):
        SFTConfig(lr=1e-3)  # a misspelt key fails loudly
    for bad in (
        {"learning_rate": 0},
        {"schedule": "step"},
        {"eval_fraction": 1.0},
        {"mixed_precision": "fp8"},
        {"max_steps": 0},
        {"batch_size": 0},
    ):
        with pytest.raises(ValueError):
            SFTConfig(**bad)
