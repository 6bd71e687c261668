"""One training stage on a tiny Llama, in its own process, for the kill-and-resume tests
(``tests/training/test_resume.py``): ``python -m tests.training.resume_child <stage> <checkpoints> <out>``.

Writes ``<out>/weights.safetensors`` (the returned model), ``<out>/history.json`` (every
logged row but the wall-clock ones) and, for PPO, ``<out>/samples.json``. With
``ALIGNOPS_TEST_STALL_AT_SAVE=<step>``, the save of checkpoint ``<step>`` stops half-way
(accelerate's state written, the loop's not, the folder not yet renamed), touches
``<out>/stalled`` and sleeps, so that the test's SIGKILL lands in the middle of a save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import alignops.training.checkpoints as checkpoints
from alignops.models import build_causal_lm
from alignops.models.generation import GenerationConfig
from alignops.training.common import MetricHistory
from tests.helpers import TINY_LLAMA, CountingScorer, make_tiny_tokenizer
from tests.training.test_sft import PROMPTS as SFT_PROMPTS  # the SFT tests' demonstrations
from tests.training.test_sft import RESPONSES as SFT_RESPONSES

WALL_CLOCK = ("_per_s", "elapsed_s", "reference_s")
"""Metric names ending so measure time, which a resumed run cannot repeat."""
STEPS, EVERY = 8, 3
"""Checkpoints at steps 3 and 6 of 8: the tests kill the run while it saves step 6."""


def _stall_at(step: int, out: Path) -> None:
    original = checkpoints.save_file

    def stalling(tensors, path):
        original(tensors, path)
        if Path(path).parent.name.startswith(f"{checkpoints.CHECKPOINT_PREFIX}{step:08d}"):
            (out / "stalled").touch()
            time.sleep(600)

    checkpoints.save_file = stalling


def sft(folder: str, history: MetricHistory):
    from alignops.training.sft import train_sft
    from alignops.training.sft_config import SFTConfig
    # 6 rows in 3 micro-batches of 2, 2 per step: 2 steps per epoch, the second one short;
    # the checkpoint at step 3 is in the middle of the second epoch
    config = SFTConfig(learning_rate=3e-3, batch_size=2, grad_accum=2, max_steps=STEPS, warmup_steps=1, log_every=1,
                       eval_every=2, eval_fraction=0.25, eval_batch_size=4, packing=False, checkpoint_every=EVERY)
    tokenizer = make_tiny_tokenizer(SFT_PROMPTS + SFT_RESPONSES)
    return train_sft(tokenizer, SFT_PROMPTS, SFT_RESPONSES, TINY_LLAMA, config, history, folder)


def reward(folder: str, history: MetricHistory):
    from alignops.training.reward import train_reward_model
    from tests.training.test_reward import BAD, GOOD, MODEL, PROMPTS, TINY, separable_pairs

    config = dataclasses.replace(TINY, max_steps=STEPS, batch_size=9, checkpoint_every=EVERY)
    tokenizer = make_tiny_tokenizer(PROMPTS + GOOD + BAD)
    torch.manual_seed(0)
    sft_model = build_causal_lm(MODEL, tokenizer)
    sft_model.config.attention_dropout = 0.2  # dropout draws from the global generator, which a resume must restore
    trained = train_reward_model(sft_model, tokenizer, separable_pairs(6), separable_pairs(2, seed=1), MODEL, config,
                                 history, folder)
    return trained.model


def dpo(folder: str, history: MetricHistory):
    from alignops.training.dpo import train_dpo
    from tests.training.test_dpo import CHOSEN, HELDOUT, MODEL, PROMPTS, REJECTED, TINY, TRAIN

    config = dataclasses.replace(TINY, max_steps=STEPS, batch_size=3, checkpoint_every=EVERY)
    replies = [MODEL.response_prefix + t for t in CHOSEN + REJECTED]
    tokenizer = make_tiny_tokenizer(MODEL.format_prompts(PROMPTS) + replies)
    torch.manual_seed(0)
    sft_model = build_causal_lm(MODEL, tokenizer)
    return train_dpo(sft_model, tokenizer, TRAIN, HELDOUT, MODEL, config, history, folder)


def ppo(folder: str, history: MetricHistory):
    from alignops.training.ppo import train_ppo
    from tests.training.test_ppo import PROMPTS, TINY

    # adaptive β and ptx's draw of demonstrations: their state must come back too; 6 prompts in
    # batches of 4 straddle permutations
    config = dataclasses.replace(TINY, steps=STEPS, checkpoint_every=EVERY, kl_controller="adaptive",
                                 kl_horizon=50.0, rollout_batch_size=4, minibatch_size=2, num_samples=1,
                                 ptx_coef=0.5)
    prompts = PROMPTS + ["change my plan", "thanks for the help"]
    tokenizer = make_tiny_tokenizer(prompts)
    torch.manual_seed(0)
    sft_model = build_causal_lm(TINY_LLAMA, tokenizer)
    demonstrations = (prompts[:3], ["it ships today", "press forgot password", "refunded"])
    result = train_ppo(sft_model, tokenizer, CountingScorer(), prompts[:6], TINY_LLAMA, config,
                       GenerationConfig(temperature=0.7), history, folder, demonstrations)
    return result


STAGES = {"sft": sft, "reward": reward, "dpo": dpo, "ppo": ppo}


def main(stage: str, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("ALIGNOPS_TEST_STALL_AT_SAVE"):
        _stall_at(int(os.environ["ALIGNOPS_TEST_STALL_AT_SAVE"]), out_dir)
    history = MetricHistory()
    result = STAGES[stage](folder, history)
    if int(os.environ.get("RANK", "0")):  # under torchrun: rank 0 writes what the test compares
        return
    if stage == "ppo":
        (out_dir / "samples.json").write_text(json.dumps(result.samples))
        result = result.policy
    weights = {name: tensor.detach().contiguous().clone() for name, tensor in result.state_dict().items()}
    save_file(weights, str(out_dir / "weights.safetensors"))
    rows = [{k: v for k, v in row.items() if not k.endswith(WALL_CLOCK)} for row in history.rows]
    (out_dir / "history.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
