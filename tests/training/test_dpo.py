"""The DPO loop on a tiny Llama: reference taken once, it learns, logs, stops on NaN, repeats itself."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from alignops.core.logprobs import sequence_logprobs
from alignops.models.loading import build_causal_lm
from alignops.training import dpo as dpo_module
from alignops.training.common import MetricHistory, NonFiniteLossError
from alignops.training.dpo import (
    PreferencePairs,
    _pair_loader,
    _pair_loss,
    pair_rows,
    reference_logprobs,
    tokenize_pairs,
    train_dpo,
)
from alignops.training.dpo_config import DPOConfig
from tests.helpers import TINY_LLAMA, make_chat_tokenizer, make_tiny_tokenizer

LOGGED_EVERY_STEP = {
    "loss/dpo",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "dpo/lr",
    "dpo/grad_norm",
    "dpo/pairs_per_s",
}
LOGGED_EVERY_EVAL = {"eval/dpo/loss", "eval/dpo/rewards/accuracies"}
PROMPTS = ["please reset my password", "where is my order", "refund the charge", "close my account"]
# Helpful, polite replies are preferred to curt ones; lengths differ so padding is exercised.
CHOSEN = [
    "sure, open settings and choose reset password",
    "your order ships today, thank you",
    "the refund is on its way, sorry for the trouble",
    "done, your account is closed, thank you",
]
REJECTED = ["no", "go away", "ask someone else", "no, not now"]
MODEL = TINY_LLAMA
TRAIN = PreferencePairs(PROMPTS * 2, CHOSEN * 2, REJECTED * 2)
HELDOUT = PreferencePairs(PROMPTS, CHOSEN, REJECTED)
# Small and quick; tests override what they exercise.
TINY = DPOConfig(
    learning_rate=3e-3, batch_size=4, max_steps=3, warmup_steps=0, ref_batch_size=3, eval_every=2, eval_batch_size=3
)


@pytest.fixture(scope="module")
def tokenizer():
    texts = MODEL.format_prompts(PROMPTS) + [MODEL.response_prefix + t for t in CHOSEN + REJECTED]
    return make_tiny_tokenizer(texts)


@pytest.fixture
def sft_model(tokenizer):
    torch.manual_seed(0)
    return build_causal_lm(MODEL, tokenizer)


def run(sft_model, tokenizer, config=TINY, heldout=HELDOUT, **kwargs):
    history = MetricHistory()
    policy = train_dpo(sft_model, tokenizer, TRAIN, heldout, MODEL, config, history, **kwargs)
    return policy, history


def training_rows(history: MetricHistory) -> list[dict]:
    return [row for row in history.rows if "loss/dpo" in row]


def test_reference_logprobs_are_taken_once_before_training(sft_model, tokenizer, monkeypatch):
    reference_passes, forwards = [], []
    real_reference, real_forward = dpo_module.reference_logprobs, dpo_module.completion_logprobs

    def counting_reference(model, rows, *args, **kwargs):
        reference_passes.append(rows["input_ids"].shape[0])
        return real_reference(model, rows, *args, **kwargs)

    def counting_forward(model, batch):
        forwards.append((len(reference_passes), batch["input_ids"].shape[0]))
        return real_forward(model, batch)

    monkeypatch.setattr(dpo_module, "reference_logprobs", counting_reference)
    monkeypatch.setattr(dpo_module, "completion_logprobs", counting_forward)
    config = dataclasses.replace(TINY, max_steps=4, eval_every=10)
    _, history = run(sft_model, tokenizer, config)

    n_train, n_heldout = len(TRAIN.prompts), len(HELDOUT.prompts)
    assert reference_passes == [2 * n_train, 2 * n_heldout]  # every chosen and rejected row, once
    # Each distinct (prompt, response) is scored once: TRAIN repeats its pairs, so 16 rows are 8.
    distinct_train = len(set(zip(TRAIN.prompts * 2, [*TRAIN.chosen, *TRAIN.rejected], strict=True)))
    distinct_heldout = len(set(zip(HELDOUT.prompts * 2, [*HELDOUT.chosen, *HELDOUT.rejected], strict=True)))
    ref_batch_rows = 2 * config.ref_batch_size
    n_reference_forwards = math.ceil(distinct_train / ref_batch_rows) + math.ceil(distinct_heldout / ref_batch_rows)
    n_eval_forwards = math.ceil(n_heldout / config.eval_batch_size)  # one evaluation, after the last step
    assert len(forwards) == n_reference_forwards + config.max_steps + n_eval_forwards
    # After the reference passes, each training forward runs a batch's chosen and rejected
    # rows together: 2b rows, fewer where pairs share a response (TRAIN repeats its pairs).
    step_forwards = [rows for _, rows in forwards[n_reference_forwards:]][: config.max_steps]
    assert all(2 <= rows <= 2 * config.batch_size for rows in step_forwards)
    # The first step's loss is taken before any update, where the policy equals the reference: log 2.
    assert training_rows(history)[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    assert training_rows(history)[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_reference_logprobs_match_one_row_at_a_time(sft_model, tokenizer):
    rows = tokenize_pairs(tokenizer, TRAIN, MODEL)
    batched = reference_logprobs(sft_model, rows, batch_size=3, average=False, device=torch.device("cpu"))
    lengths = rows["attention_mask"].sum(1).tolist()
    with torch.no_grad():  # each row alone, without padding
        naive = torch.stack(
            [
                sequence_logprobs(
                    sft_model(input_ids=rows["input_ids"][i : i + 1, :n]).logits,
                    rows["input_ids"][i : i + 1, :n],
                    rows["completion_mask"][i : i + 1, :n],
                )[0]
                for i, n in enumerate(lengths)
            ]
        )
    torch.testing.assert_close(batched, naive, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("processes", [2, 3])
def test_a_reference_pass_shared_out_between_ranks_sums_to_the_whole_one(sft_model, tokenizer, processes):
    rows = tokenize_pairs(tokenizer, TRAIN, MODEL)
    cpu = torch.device("cpu")
    whole = reference_logprobs(sft_model, rows, batch_size=2, average=False, device=cpu)
    shares = [reference_logprobs(sft_model, rows, 2, False, cpu, shard=(rank, processes)) for rank in range(processes)]
    assert sum(bool((share != 0).any()) for share in shares) == processes  # every rank scored something
    everyone = torch.stack(shares).sum(0)  # what all_reduce_sum gives each rank
    assert torch.equal(reference_logprobs(sft_model, rows, 2, False, cpu, (0, processes), lambda t: everyone), whole)
    assert torch.equal(everyone, whole)  # each row scored by exactly one rank, so the sum is exact


def test_shared_responses_are_scored_once_with_the_same_loss(sft_model, tokenizer):
    rows = tokenize_pairs(tokenizer, TRAIN, MODEL)
    ref = torch.zeros(rows["input_ids"].shape[0])
    batch = next(iter(_pair_loader(rows, ref, [list(range(len(TRAIN.prompts)))])))
    assert batch["input_ids"].shape[0] == 8  # 16 rows, 8 distinct
    loss, _ = _pair_loss(sft_model, batch, TINY)
    every_row = {**rows, "pair_rows": torch.arange(16), "ref_logps": ref}
    naive_loss, _ = _pair_loss(sft_model, every_row, TINY)
    torch.testing.assert_close(loss, naive_loss)


def test_with_a_chat_template_pairs_are_the_templated_conversations():
    tokenizer = make_chat_tokenizer(PROMPTS + CHOSEN + REJECTED)
    model_config = dataclasses.replace(MODEL, max_position_embeddings=96, max_response_tokens=32)
    batch = tokenize_pairs(tokenizer, HELDOUT, model_config)
    replies = CHOSEN + REJECTED
    for row, (prompt, reply) in enumerate(zip(PROMPTS * 2, replies, strict=True)):
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, add_generation_prompt=True)["input_ids"]
        whole = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": reply}])["input_ids"]
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == whole
        assert batch["completion_mask"][row, :n].tolist() == [0] * len(head) + [1] * (len(whole) - len(head))


def test_pair_rows_put_chosen_then_rejected():
    assert pair_rows(torch.tensor([2, 0]), n_pairs=5).tolist() == [2, 0, 7, 5]


def test_steps_give_finite_loss_change_parameters_and_leave_sft_alone(sft_model, tokenizer):
    before = {name: p.detach().clone() for name, p in sft_model.named_parameters()}
    policy, history = run(sft_model, tokenizer)
    rows = training_rows(history)
    assert len(rows) == TINY.max_steps
    assert all(math.isfinite(row["loss/dpo"]) for row in rows)
    assert all(LOGGED_EVERY_STEP <= row.keys() for row in rows)
    evals = [row for row in history.rows if "eval/dpo/loss" in row]
    assert [row["step"] for row in evals] == [2, 3]
    assert all(LOGGED_EVERY_EVAL <= row.keys() for row in evals)
    changed = [name for name, p in policy.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)
    assert all(torch.equal(p, before[name]) for name, p in sft_model.named_parameters())


def test_on_a_toy_set_accuracy_rises_and_margins_grow(sft_model, tokenizer):
    config = dataclasses.replace(TINY, max_steps=24, eval_every=8, warmup_steps=2)
    _, history = run(sft_model, tokenizer, config)
    rows = training_rows(history)
    early, late = rows[:3], rows[-3:]
    assert sum(r["rewards/accuracies"] for r in late) > sum(r["rewards/accuracies"] for r in early)
    assert min(r["rewards/margins"] for r in late) > max(r["rewards/margins"] for r in early) + 0.5
    assert late[-1]["loss/dpo"] < 0.5 * math.log(2)
    evals = [row for row in history.rows if "eval/dpo/loss" in row]
    assert evals[-1]["eval/dpo/rewards/accuracies"] == 1.0
    assert evals[-1]["eval/dpo/loss"] < evals[0]["eval/dpo/loss"]


@pytest.mark.parametrize(
    ("loss_type", "first_loss", "averaged"), [("sigmoid", math.log(2), False), ("ipo", None, True)]
)
def test_loss_type_picks_the_objective_and_the_log_prob_reduction(
    sft_model, tokenizer, monkeypatch, loss_type, first_loss, averaged
):
    seen = []
    real_reference = dpo_module.reference_logprobs

    def recording_reference(model, rows, batch_size, average, device, *args):
        seen.append(average)
        return real_reference(model, rows, batch_size, average, device, *args)

    monkeypatch.setattr(dpo_module, "reference_logprobs", recording_reference)
    config = dataclasses.replace(TINY, loss_type=loss_type, beta=0.5, max_steps=1)
    _, history = run(sft_model, tokenizer, config)
    # IPO regresses h = 0 at the start towards 1/(2β): its first loss is (1/(2β))² = 1.
    expected = first_loss if first_loss is not None else (1 / (2 * config.beta)) ** 2
    assert training_rows(history)[0]["loss/dpo"] == pytest.approx(expected, abs=1e-5)
    assert seen == [averaged, averaged]


def test_rpo_alpha_keeps_the_chosen_likelihood_up(tokenizer):
    def last_row(rpo_alpha: float) -> dict:
        torch.manual_seed(0)
        sft_model = build_causal_lm(MODEL, tokenizer)
        config = dataclasses.replace(TINY, rpo_alpha=rpo_alpha, max_steps=8)
        return training_rows(run(sft_model, tokenizer, config, heldout=None)[1])[-1]

    plain, anchored = last_row(0.0), last_row(1.0)
    assert anchored["loss/nll"] < plain["loss/nll"]
    assert anchored["logps/chosen"] > plain["logps/chosen"]
    assert anchored["rewards/accuracies"] == 1.0


def test_unknown_loss_type_and_bad_values_fail_loudly():
    with pytest.raises(ValueError, match="loss_type must be one of .*'ipo'.*'sigmoid'"):
        DPOConfig(loss_type="hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError, match="rpo_alpha"):
        DPOConfig(rpo_alpha=-1.0)
    with pytest.raises(TypeError):
        DPOConfig(betta=0.1)  # a misspelt YAML key


def test_nan_guard_names_stage_and_step(sft_model, tokenizer, monkeypatch):
    real_loss = dpo_module.dpo_loss
    calls = []

    def nan_on_third_call(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), stats

    monkeypatch.setattr(dpo_module, "dpo_loss", nan_on_third_call)
    with pytest.raises(NonFiniteLossError, match=r"dpo: non-finite loss .* at step 2"):
        run(sft_model, tokenizer, dataclasses.replace(TINY, max_steps=5, eval_every=100), heldout=None)


def test_same_seed_same_weights_other_seed_other_weights(tokenizer):
    def trained(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        sft_model = build_causal_lm(MODEL, tokenizer)
        config = dataclasses.replace(TINY, seed=seed, batch_size=2, max_steps=3)
        return run(sft_model, tokenizer, config, heldout=None)[0].state_dict()

    first, second, other = trained(0), trained(0), trained(1)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)


def test_checkpoints_and_no_heldout(sft_model, tokenizer, tmp_path):
    config = dataclasses.replace(TINY, max_steps=4, checkpoint_every=2, keep_checkpoints=1)
    _, history = run(sft_model, tokenizer, config, heldout=PreferencePairs([], [], []), checkpoint_dir=str(tmp_path))
    assert [p.name for p in tmp_path.glob("step_*")] == ["step_00000004"]
    assert not any("eval/dpo/loss" in row for row in history.rows)


def test_empty_training_set_fails_loudly(sft_model, tokenizer):
    with pytest.raises(ValueError, match="no training pairs"):
        train_dpo(sft_model, tokenizer, PreferencePairs([], [], []), None, MODEL, TINY, MetricHistory())


def test_gradient_checkpointing_changes_memory_not_results(sft_model, tokenizer):
    plain_policy, plain = run(copy.deepcopy(sft_model), tokenizer)
    config = dataclasses.replace(TINY, gradient_checkpointing=True)
    policy, checkpointed = run(copy.deepcopy(sft_model), tokenizer, config)
    assert policy.is_gradient_checkpointing and not sft_model.is_gradient_checkpointing
    assert [r["loss/dpo"] for r in training_rows(checkpointed)] == pytest.approx(
        [r["loss/dpo"] for r in training_rows(plain)]
    )
    for (name, a), b in zip(plain_policy.named_parameters(), policy.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
