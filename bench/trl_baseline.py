"""TRL's trainers on the benchmark's workload: the baseline our loops are compared with.

Runs inside a TRL virtual environment, not the project's (``make bench-trl`` builds
``.venv-trl`` from ``bench/requirements-trl.txt`` for ``reward`` and ``dpo``, and
``.venv-trl-ppo`` from ``bench/requirements-trl-ppo.txt`` for ``ppo``), so it imports
nothing from alignops. Everything it needs is in the workspace ``bench/run.py``
exports: ``workload.json`` (batch sizes, step counts, lengths, hyperparameters,
threads), ``tokenizer/``, ``policy/`` (the causal LM both sides start from),
``pairs.jsonl`` and ``prompts.jsonl`` (already in the model's prompt format).

One stage per process, so each stage's peak RSS is its own::

    .venv-trl/bin/python bench/trl_baseline.py --stage dpo --size 25m   # data/06_models/bench_25m -> bench_trl_25m.json

Throughput is measured between optimiser steps (updates, for PPO) ``warmup`` and
``warmup + steps``, from the trainer's ``on_step_end`` callbacks: model building,
dataset tokenisation and the first steps are left out, as on our side. Model FLOPs
(reward, DPO) are counted as ``bench/ours.py`` counts ours: every forward's tokens, read
off its token-embedding call, 2 N per token (N: the ``nn.Linear`` parameters) plus
4 L d T^2 per row of T tokens, 3x for a forward with gradients (forward + backward).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
import trl
from datasets import Dataset
from model_flops import TokenCounter, flops_figures, model_shape  # bench/, this script's folder
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

STAGES = ("reward", "dpo", "ppo")


def timed_flops(shape: dict, counter: TokenCounter, clock: StepClock, warmup: int) -> dict:
    """Model FLOPs of the forwards inside the timed steps (``model_flops.flops_figures``, as ours)."""
    (wall0, cpu0), (wall1, cpu1) = clock.times[warmup - 1], clock.times[-1]
    calls = [call for call in counter.calls if wall0 < call[0] <= wall1]
    steps = len(clock.times) - warmup
    figures = flops_figures(shape, calls, wall1 - wall0, cpu1 - cpu0, steps)
    figures["trained_tokens_per_step"] = sum(call[2] for call in calls if call[1]) / steps
    return figures


class StepClock(TrainerCallback):
    """Wall-clock and process CPU time at the end of every optimiser step (every PPO update)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append((time.perf_counter(), time.process_time()))

    def rates(self, warmup: int, work_per_step: float, name: str) -> dict[str, float]:
        """``<name>_per_s`` and ``<name>_per_cpu_s`` over the steps after ``warmup``, with the seconds
        they took (as bench/run.py reports ours: CPU time is steadier on a busy machine)."""
        if len(self.times) <= warmup:
            raise RuntimeError(f"only {len(self.times)} steps ended; need more than the {warmup} warm-up steps")
        (wall0, cpu0), (wall1, cpu1) = self.times[warmup - 1], self.times[-1]
        work = work_per_step * (len(self.times) - warmup)
        return {
            f"{name}_per_s": work / (wall1 - wall0),
            f"{name}_per_cpu_s": work / (cpu1 - cpu0),
            "measured_s": wall1 - wall0,
            "measured_cpu_s": cpu1 - cpu0,
            "cpu_share": (cpu1 - cpu0) / (wall1 - wall0),
        }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def common_args(workload: dict, stage: dict, output_dir: str) -> dict:
    """TrainingArguments shared by the Trainer-based stages: no logging, saving or evaluation;
    fp32 and no gradient checkpointing (TRL defaults to bf16 and checkpointing; our loops use
    neither, and both would change what is measured)."""
    return {
        "output_dir": output_dir,
        "max_steps": workload["warmup_steps"] + stage["steps"],
        "per_device_train_batch_size": stage["batch_size"],
        "gradient_accumulation_steps": stage["grad_accum"],
        "learning_rate": stage["learning_rate"],
        "lr_scheduler_type": stage["schedule"],
        "warmup_steps": stage["warmup_steps"],
        "weight_decay": stage["weight_decay"],
        "max_grad_norm": stage["max_grad_norm"],
        "seed": workload["seed"],
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataset_num_proc": None,
    }


def pairs_dataset(workspace: Path, n_rows: int) -> Dataset:
    rows = read_jsonl(workspace / "pairs.jsonl")[:n_rows]
    return Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])


def run_reward(workspace: Path, workload: dict, output_dir: str) -> dict:
    from trl import RewardConfig, RewardTrainer

    stage = workload["reward"]
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    model = AutoModelForSequenceClassification.from_pretrained(workspace / "policy", num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**common_args(workload, stage, output_dir), max_length=workload["max_length"])
    clock = StepClock()
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=pairs_dataset(workspace, stage["n_pairs"]),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    with TokenCounter(tokenizer.pad_token_id) as counter:
        trainer.train()
    pairs_per_step = stage["batch_size"] * stage["grad_accum"]
    return {
        **clock.rates(workload["warmup_steps"], pairs_per_step, "rm_pairs"),
        "pairs_per_step": pairs_per_step,
        "flops": timed_flops(model_shape(model), counter, clock, workload["warmup_steps"]),
    }


def run_dpo(workspace: Path, workload: dict, output_dir: str) -> dict:
    from trl import DPOConfig, DPOTrainer

    stage = workload["dpo"]
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(workspace / "policy", dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(workspace / "policy", dtype=torch.float32)
    args = DPOConfig(
        **common_args(workload, stage, output_dir),
        max_length=workload["max_length"],
        beta=stage["beta"],
        loss_type=[stage["loss_type"]],
        # TRL's default: the reference forward runs inside every step, as in our loop (see README)
        precompute_ref_log_probs=stage.get("precompute_ref_log_probs", False),
    )
    clock = StepClock()
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=pairs_dataset(workspace, stage["n_pairs"]),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    with TokenCounter(tokenizer.pad_token_id) as counter:
        trainer.train()
    pairs_per_step = stage["batch_size"] * stage["grad_accum"]
    return {
        **clock.rates(workload["warmup_steps"], pairs_per_step, "dpo_pairs"),
        "pairs_per_step": pairs_per_step,
        "flops": timed_flops(model_shape(model), counter, clock, workload["warmup_steps"]),
    }


def run_ppo(workspace: Path, workload: dict, output_dir: str) -> dict:
    from transformers import DataCollatorWithPadding
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    stage = workload["ppo"]
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    tokenizer.padding_side = "left"  # queries are continued from their end
    policy = AutoModelForCausalLM.from_pretrained(workspace / "policy", dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(workspace / "policy", dtype=torch.float32)

    def critic() -> torch.nn.Module:
        # The reward model our loop trained (bench/run.py saves it), and TRL's value model
        # started from it as TRL's examples do: the policy's size, a scalar head.
        found = (workspace / "reward_model" / "config.json").is_file()
        model = AutoModelForSequenceClassification.from_pretrained(
            workspace / ("reward_model" if found else "policy"), num_labels=1, dtype=torch.float32
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    value_model, reward_model = critic(), critic()
    prompts = [row["prompt"] for row in read_jsonl(workspace / "prompts.jsonl")]
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    keep = workload["max_prompt_tokens"]
    dataset = Dataset.from_dict({"input_ids": [ids[-keep:] for ids in encoded]})

    # One rollout of `rollout_batch_size` episodes, split into `minibatch_size` minibatches
    # for `ppo_epochs` epochs: TRL's batch = per_device_train_batch_size x grad_accum, cut
    # into num_mini_batches (one micro-batch each, so one optimiser step per minibatch).
    n_updates = workload["warmup_steps"] + stage["steps"]
    args = PPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=stage["rollout_batch_size"],
        gradient_accumulation_steps=1,
        num_mini_batches=stage["rollout_batch_size"] // stage["minibatch_size"],
        num_ppo_epochs=stage["ppo_epochs"],
        total_episodes=n_updates * stage["rollout_batch_size"],
        local_rollout_forward_batch_size=stage["generation_batch_size"],
        response_length=stage["max_new_tokens"],
        temperature=stage["temperature"],
        stop_token="eos",
        missing_eos_penalty=stage["missing_eos_penalty"],
        learning_rate=stage["learning_rate"],
        lr_scheduler_type=stage["schedule"],
        kl_coef=stage["kl_coef"],
        kl_estimator=stage["kl_estimator"],
        cliprange=stage["cliprange"],
        cliprange_value=stage["cliprange_value"],
        vf_coef=stage["vf_coef"],
        gamma=stage["gamma"],
        lam=stage["lam"],
        whiten_rewards=False,
        num_sample_generations=0,
        seed=workload["seed"],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )

    # Generation time and tokens, per update: wrap TRL's own batched sampling.
    generation: list[tuple[float, int, int]] = []  # (seconds, generated tokens, rows)
    sample = ppo_module.batch_generation
    eos_id = tokenizer.eos_token_id

    def timed_batch_generation(model, queries, *rest, **kwargs):
        start = time.perf_counter()
        query_responses, logits = sample(model, queries, *rest, **kwargs)
        seconds = time.perf_counter() - start
        response = query_responses[:, queries.shape[1] :]  # (B, R)
        is_eos = (response == eos_id).long()
        generated = ((is_eos.cumsum(1) - is_eos) == 0).sum()  # tokens up to and including the first EOS
        generation.append((seconds, int(generated), response.shape[0]))
        return query_responses, logits

    ppo_module.batch_generation = timed_batch_generation
    clock = StepClock()
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(min(len(dataset), stage["rollout_batch_size"]))),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[clock],
    )
    trainer.train()
    warmup = workload["warmup_steps"]
    figures = clock.rates(warmup, stage["rollout_batch_size"], "ppo_episodes")
    measured = generation[warmup : len(clock.times)]
    generation_s = sum(s for s, _, _ in measured)
    tokens = sum(t for _, t, _ in measured)
    rows = sum(r for _, _, r in measured)
    return {
        **figures,
        "ppo_generation_tokens_per_s": tokens / generation_s,
        "ppo_response_tokens_per_s": tokens / figures["measured_s"],
        "ppo_mean_response_tokens": tokens / rows,
        "ppo_generation_share": generation_s / figures["measured_s"],
    }


RUNNERS = {"reward": run_reward, "dpo": run_dpo, "ppo": run_ppo}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--size", default="tiny", help="whose workspace and results (named as bench/run.py names them)")
    parser.add_argument("--workspace", type=Path, help="default data/06_models/bench[_<size>]")
    parser.add_argument("--out", type=Path, help="default data/08_reporting/bench_trl[_<size>].json")
    args = parser.parse_args(argv)
    suffix = "" if args.size == "tiny" else f"_{args.size}"
    args.workspace = args.workspace or Path(f"data/06_models/bench{suffix}")
    args.out = args.out or Path(f"data/08_reporting/bench_trl{suffix}.json")

    raw = (args.workspace / "workload.json").read_bytes()
    workload = json.loads(raw)
    if workload.get("size", "tiny") != args.size:
        parser.error(f"{args.workspace} holds size {workload.get('size')!r}, not {args.size!r}")
    torch.set_num_threads(workload["threads"])
    torch.manual_seed(workload["seed"])
    with tempfile.TemporaryDirectory(prefix=f"trl-{args.stage}-") as output_dir:
        figures = RUNNERS[args.stage](args.workspace, workload, output_dir)
    figures |= {
        "workload_sha": hashlib.sha256(raw).hexdigest()[:16],  # as bench/run.py computes it
        "steps": workload[args.stage]["steps"],
        "warmup_steps": workload["warmup_steps"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_1min": os.getloadavg()[0],  # how busy the machine was: timings on a loaded one are noisy
        "trl": trl.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.stage] = figures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    json.dump({args.stage: figures}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
