"""Our training loops on a clock: each stage's loop, as its Kedro node calls it, timed step by step.

``bench/run.py`` drives these; this module knows how to feed each loop and how to
read a throughput off the log rows it writes. The clock is the loop's own ``log``
callable with a timestamp: loops log right after each optimiser step, so nothing is
patched into them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import resource
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from kedro.config import MissingConfigException, OmegaConfigLoader
from kedro.io import DataCatalog

from alignops.models.config import ModelConfig
from alignops.models.loading import load_model
from alignops.models.tokenizer import load_tokenizer
from alignops.settings import CONFIG_LOADER_ARGS
from bench.model_flops import TokenCounter, flops_figures, forward_flops, model_shape

NEVER = 10**9
"""An interval (evaluation, samples, checkpoints) that a capped run never reaches."""
MEASURE_OVERRIDES = {"log_every": 1, "eval_every": NEVER, "sample_every": NEVER, "checkpoint_every": 0}
"""What changes in a stage's configuration besides the step cap: a log row (the clock) every
step, and nothing else (evaluation, samples, checkpoints) inside the timed steps."""


# ---------------------------------------------------------------------------------------
# The clock: the loops' own log callable, time-stamped


@dataclasses.dataclass(frozen=True)
class Window:
    """The timed steps: which, and how long they took in wall-clock and in this process's CPU time."""

    steps: list[int]
    seconds: float
    """Wall-clock seconds: what a user waits for."""
    cpu_seconds: float
    """Process CPU seconds (all threads): with one thread, nearly what a quiet machine would take,
    however busy this one is; with several, it also counts their spinning."""

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.seconds


class StepClock:
    """A ``log(metrics, step)`` callable: the first row of every step, with wall and CPU time.

    Loops log training metrics right after the optimiser step; a later row for the same
    step (held-out evaluation) keeps the first row's times.
    """

    def __init__(self) -> None:
        self.started = (time.perf_counter(), time.process_time())
        self.rows: dict[int, tuple[float, float, dict[str, float]]] = {}

    def __call__(self, metrics: dict[str, Any], step: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        values = {k: float(v) for k, v in metrics.items()}
        if step in self.rows:
            self.rows[step][2].update(values)
        else:
            self.rows[step] = (wall, cpu, values)

    def window(self, warmup: int) -> Window:
        """The steps after ``warmup``, from the end of step ``warmup`` to the end of the last."""
        steps = sorted(self.rows)
        if warmup not in self.rows or steps[-1] <= warmup:
            raise RuntimeError(f"the loop logged steps {steps}; the clock needs step {warmup} and a later one")
        timed = [s for s in steps if s > warmup]
        (wall0, cpu0, _), (wall1, cpu1, _) = self.rows[warmup], self.rows[timed[-1]]
        return Window(timed, wall1 - wall0, cpu1 - cpu0)

    def intervals(self, timed: list[int]) -> list[float]:
        """Wall-clock seconds between each timed step's row and the previous step's row."""
        steps = sorted(self.rows)
        previous = {s: steps[i - 1] for i, s in enumerate(steps) if i}
        return [self.rows[s][0] - self.rows[previous[s]][0] for s in timed]

    def metric(self, step: int, name: str) -> float:
        return self.rows[step][2][name]


def timed_calls(clock: StepClock, window: Window, counter: TokenCounter) -> list:
    """The forwards inside the timed steps: after step ``warmup``'s log row, up to the last step's."""
    first = min(window.steps)
    previous = max(s for s in clock.rows if s < first)
    return counter.between(clock.rows[previous][0], clock.rows[window.steps[-1]][0])


def timing(window: Window) -> dict[str, float]:
    """How long the timed steps took, and what share of it this process was on a CPU."""
    return {"measured_s": window.seconds, "measured_cpu_s": window.cpu_seconds, "cpu_share": window.cpu_share}


def make_config(config_class: type, params: dict[str, Any], steps: int) -> Any:
    """``config_class(**params)`` with the step cap and ``MEASURE_OVERRIDES`` (those it has)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    overrides = {k: v for k, v in MEASURE_OVERRIDES.items() if k in fields}
    step_field = "max_steps" if "max_steps" in fields else "steps"
    return config_class(**{**params, **overrides, step_field: steps})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------
# Inputs: configuration and data through Kedro's own loader and catalog


@dataclasses.dataclass
class Inputs:
    params: dict[str, Any]
    model_config: ModelConfig
    demonstrations: Any  # DataFrame: prompt, response
    preferences: Any  # DataFrame: prompt, chosen, rejected, ...
    catalog: DataCatalog


def load_inputs(project: Path, env: str, max_rows: int | None = None) -> Inputs:
    loader = OmegaConfigLoader(conf_source=str(project / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})
    try:
        credentials = loader["credentials"]
    except (KeyError, MissingConfigException):
        credentials = {}
    catalog = DataCatalog.from_config(loader["catalog"], credentials)
    params = loader["parameters"]
    missing = [name for name in ("sft_demonstrations", "preferences_train") if not catalog.exists(name)]
    if missing:
        raise SystemExit(
            f"bench: {missing} not found; run `kedro run --pipelines data_generation,ingestion,data_validation` first"
        )
    return Inputs(
        params=params,
        model_config=ModelConfig(**params.get("model", {})),
        demonstrations=catalog.load("sft_demonstrations").head(max_rows),
        preferences=catalog.load("preferences_train").head(max_rows),
        catalog=catalog,
    )


def ppo_prompts(inputs: Inputs) -> list[str]:
    """The prompts PPO rolls out on, as the ppo pipeline's own node picks them."""
    from alignops.pipelines.ppo.nodes import collect_prompts

    return collect_prompts(inputs.preferences, inputs.demonstrations, inputs.params.get("ppo", {}))


# ---------------------------------------------------------------------------------------
# Sizes: the default configuration, or a larger from-scratch Llama on fixed-length rows


@dataclasses.dataclass(frozen=True)
class Size:
    """A model shape and row lengths laid over the configuration, with batch sizes and step counts to fit."""

    name: str
    model: dict[str, Any]
    """``ModelConfig`` fields replaced (the shape; prompt and reply limits)."""
    stages: dict[str, dict[str, Any]]
    """Per stage, configuration fields replaced (batch sizes; PPO's rollout length)."""
    steps: dict[str, int]
    warmup: int
    prompt_tokens: int
    """Every prompt is exactly this many tokens, the template included."""
    response_tokens: int
    """Every reply (SFT response, chosen, rejected) is exactly this many tokens, EOS included."""


SIZES: dict[str, Size | None] = {
    "tiny": None,  # the configuration as it is (conf/<env>), on the world's own data
    "25m": Size(
        name="25m",
        model={
            "hidden_size": 512,
            "num_layers": 8,
            "num_heads": 8,
            "intermediate_size": 1376,
            "max_position_embeddings": 256,
            "max_prompt_tokens": 64,
            "max_response_tokens": 192,
        },
        stages={
            "sft": {"batch_size": 8, "grad_accum": 1},
            "reward": {"batch_size": 4, "grad_accum": 1, "norm_samples": 8, "norm_max_new_tokens": 16,
                       "norm_batch_size": 8},
            "dpo": {"batch_size": 4, "grad_accum": 1, "ref_batch_size": 8, "epochs": 1.0, "max_steps": None},
            "ppo": {"rollout_batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "max_new_tokens": 192,
                    "generation_batch_size": 8, "reward_batch_size": 8},
        },
        steps={"sft": 5, "reward": 5, "ppo": 3, "dpo": 5},
        warmup=1,
        prompt_tokens=64,
        response_tokens=192,
    ),
}
"""``tiny`` is the default configuration unchanged. ``25m``: a Llama-shaped model from scratch
(512 wide, 8 layers of 8 heads, SwiGLU 1376, the run's 2k BPE tokenizer, tied embeddings:
26,354,176 parameters, 25,305,600 of them outside the embedding) on rows of exactly 64 prompt
+ 192 reply tokens. Its batch sizes and step counts keep a run to minutes on two cores."""


def single_token_words(inputs: Inputs, tokenizer) -> list[str]:
    """The world's words, in the order its texts use them, that are one token each after a space."""
    texts = [*inputs.demonstrations["prompt"], *inputs.demonstrations["response"]]
    words = [w for text in texts for w in re.findall(r"[A-Za-z]+", str(text))]
    single = {w for w in set(words) if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1}
    return [w for w in words if w in single]


def fixed_length_data(inputs: Inputs, tokenizer, size: Size, n_demonstrations: int, n_pairs: int) -> tuple:
    """Demonstrations and preference pairs whose rows are exactly ``size``'s lengths, from the world's words.

    A byte-level BPE splits text at spaces before merging, so a run of words that are each one
    token after a space is exactly as many tokens as words, alone or after the prompt. Each
    prompt (template included) is ``prompt_tokens`` long; each reply ``response_tokens`` with
    its EOS. Every pair has a prompt of its own, so no two pairs share a reward-model row.
    """
    words = single_token_words(inputs, tokenizer)
    config = inputs.model_config
    template = len(tokenizer(config.format_prompts([words[0]])[0], add_special_tokens=False)["input_ids"]) - 1
    n_prompt, n_reply = size.prompt_tokens - template, size.response_tokens - 1  # EOS is appended
    cursor = 0

    def take(n: int) -> str:
        nonlocal cursor
        picked = [words[(cursor + i) % len(words)] for i in range(n)]
        cursor += n
        return " ".join(picked)

    demonstrations = pd.DataFrame(
        [{"prompt": take(n_prompt), "response": take(n_reply)} for _ in range(n_demonstrations)]
    )
    preferences = pd.DataFrame(
        [
            {"prompt": take(n_prompt), "chosen": take(n_reply), "rejected": take(n_reply), "item_id": f"bench-{i}",
             "chosen_rank": 1, "rejected_rank": 2, "margin": 1.0}
            for i in range(n_pairs)
        ]
    )
    prompts = config.format_prompts([*demonstrations["prompt"], *preferences["prompt"]])
    replies = [config.response_prefix + r for r in
               [*demonstrations["response"], *preferences["chosen"], *preferences["rejected"]]]
    prompt_lengths = {len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]}
    reply_lengths = {len(ids) + 1 for ids in tokenizer(replies, add_special_tokens=False)["input_ids"]}
    if prompt_lengths != {size.prompt_tokens} or reply_lengths != {size.response_tokens}:
        raise RuntimeError(f"fixed-length rows came out {prompt_lengths} + {reply_lengths} tokens")
    return demonstrations, preferences


def apply_size(inputs: Inputs, tokenizer, size: Size, steps: dict[str, int], warmup: int) -> Inputs:
    """``inputs`` with ``size``'s model shape, stage settings and fixed-length data.

    Enough pairs for the reward and DPO steps (so DPO's configured run, one epoch, is exactly
    the steps run and its reference pass covers exactly those pairs), and SFT demonstrations
    for its steps and its held-out share.
    """
    params = {**inputs.params, "model": {**inputs.params.get("model", {}), **size.model}}
    for stage, overrides in size.stages.items():
        params[stage] = {**params.get(stage, {}), **overrides}
    n_pairs = max(params[s]["batch_size"] * params[s]["grad_accum"] * (warmup + steps[s]) for s in ("reward", "dpo"))
    sft_rows = params["sft"]["batch_size"] * params["sft"]["grad_accum"] * (warmup + steps["sft"])
    n_demonstrations = math.ceil(sft_rows / (1 - params["sft"].get("eval_fraction", 0.0))) + 1
    sized = dataclasses.replace(inputs, params=params, model_config=ModelConfig(**params["model"]))
    sized.demonstrations, sized.preferences = fixed_length_data(sized, tokenizer, size, n_demonstrations, n_pairs)
    return sized


def untrained_policy(inputs: Inputs, tokenizer, seed: int = 0) -> Any:
    """The configured model shape, freshly initialised (seeded), with the run's tokenizer."""
    from alignops.models.loading import build_causal_lm

    torch.manual_seed(seed)
    return build_causal_lm(inputs.model_config, tokenizer)


# ---------------------------------------------------------------------------------------
# Model FLOPs: the tokens each forward runs, and this CPU's matmul rate


def matmul_flops(n: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """This CPU's fp32 matmul rate at the current thread count: ``torch.mm`` of two n x n
    matrices (2 n^3 FLOPs), best of ``repeats`` after one untimed."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - wall)
        cpu_seconds.append(time.process_time() - cpu)
    flops = 2 * n**3
    return {
        "matmul_flops_per_s": flops / min(seconds),
        "matmul_flops_per_cpu_s": flops / min(cpu_seconds),
        "gflops_each": [round(flops / s / 1e9, 2) for s in seconds],
        "cpu_share": cpu_seconds[seconds.index(min(seconds))] / min(seconds),
        "n": n,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "dtype": "float32",
    }


# ---------------------------------------------------------------------------------------
# Stages: each runs the stage's loop on a StepClock and returns its figures


def bench_sft(inputs: Inputs, tokenizer, steps: int, warmup: int) -> tuple[dict, Any]:
    from alignops.training.sft import train_sft
    from alignops.training.sft_config import SFTConfig

    config = make_config(SFTConfig, inputs.params.get("sft", {}), warmup + steps)
    clock = StepClock()
    with TokenCounter(tokenizer.pad_token_id) as counter:
        model = train_sft(
            tokenizer,
            inputs.demonstrations["prompt"].tolist(),
            inputs.demonstrations["response"].tolist(),
            inputs.model_config,
            config,
            clock,
        )
    window = clock.window(warmup)
    # The loop reports its own tokens/s per logged interval (real tokens, padding excluded);
    # each step's rate times its duration gives its tokens.
    durations = clock.intervals(window.steps)
    tokens = sum(clock.metric(s, "sft/tokens_per_s") * d for s, d in zip(window.steps, durations, strict=True))
    figures = {
        "sft_tokens_per_s": tokens / window.seconds,
        "sft_tokens_per_cpu_s": tokens / window.cpu_seconds,
        "sft_steps_per_s": len(window.steps) / window.seconds,
        "rows_per_step": config.batch_size * config.grad_accum,
        **timing(window),
        "flops": flops_figures(
            model_shape(model), timed_calls(clock, window, counter), window.seconds, window.cpu_seconds,
            len(window.steps),
        ),
    }
    return figures, model


def bench_reward(inputs: Inputs, tokenizer, policy, steps: int, warmup: int) -> tuple[dict, Any]:
    from alignops.training.reward import train_reward_model
    from alignops.training.reward_config import RewardConfig

    config = make_config(RewardConfig, inputs.params.get("reward", {}), warmup + steps)
    clock = StepClock()
    with TokenCounter(tokenizer.pad_token_id) as counter:
        reward_model = train_reward_model(
            policy, tokenizer, inputs.preferences, None, inputs.model_config, config, clock
        )
    window = clock.window(warmup)
    pairs = config.batch_size * config.grad_accum * len(window.steps)
    figures = {
        "rm_pairs_per_s": pairs / window.seconds,
        "rm_pairs_per_cpu_s": pairs / window.cpu_seconds,
        "pairs_per_step": config.batch_size * config.grad_accum,
        **timing(window),
        "flops": flops_figures(
            model_shape(reward_model.model), timed_calls(clock, window, counter), window.seconds,
            window.cpu_seconds, len(window.steps),
        ),
    }
    return figures, reward_model


def bench_ppo(inputs: Inputs, tokenizer, policy, reward_model, steps: int, warmup: int) -> dict:
    from alignops.models.generation import GenerationConfig
    from alignops.training.ppo import train_ppo
    from alignops.training.ppo_config import PPOConfig

    config = make_config(PPOConfig, inputs.params.get("ppo", {}), warmup + steps)
    generation = GenerationConfig(**inputs.params.get("generation", {}))
    clock = StepClock()
    prompts = ppo_prompts(inputs)
    train_ppo(policy, tokenizer, reward_model, prompts, inputs.model_config, config, generation, clock)
    window = clock.window(warmup)
    episodes = config.rollout_batch_size  # per iteration (one process)
    # per iteration: generated tokens (mean length x episodes) and the loop's generation time
    generated = [clock.metric(s, "ppo/mean_response_length") * episodes for s in window.steps]
    generation_s = [
        n / clock.metric(s, "ppo/generation_tokens_per_s") for s, n in zip(window.steps, generated, strict=True)
    ]
    return {
        "ppo_episodes_per_s": episodes * len(window.steps) / window.seconds,
        "ppo_episodes_per_cpu_s": episodes * len(window.steps) / window.cpu_seconds,
        "ppo_generation_tokens_per_s": sum(generated) / sum(generation_s),
        "ppo_response_tokens_per_s": sum(generated) / window.seconds,
        "ppo_mean_response_tokens": sum(generated) / (episodes * len(window.steps)),
        "ppo_generation_share": sum(generation_s) / window.seconds,
        **timing(window),
    }


def bench_dpo(inputs: Inputs, tokenizer, policy, steps: int, warmup: int) -> dict:
    """DPO pairs/s with the one-off reference pass spread over the configured run's steps.

    Our loop takes the reference log-probs of every pair once, before step 1, so its
    steps only run the policy; TRL (by default) runs the reference inside every step.
    Counting only the steps would hide the reference's cost, so the headline figure is
    pairs / (reference pass + steps) over the run ``conf`` configures (``epochs`` or
    ``max_steps``); ``dpo_step_pairs_per_s`` is the steps alone.
    """
    from alignops.training.dpo import PreferencePairs, train_dpo
    from alignops.training.dpo_config import DPOConfig

    params = inputs.params.get("dpo", {})
    config = make_config(DPOConfig, params, warmup + steps)
    prefs = inputs.preferences
    pairs = PreferencePairs(*(prefs[column].astype(str).tolist() for column in ("prompt", "chosen", "rejected")))
    clock = StepClock()
    with TokenCounter(tokenizer.pad_token_id) as counter:
        train_dpo(policy, tokenizer, pairs, None, inputs.model_config, config, clock)
    window = clock.window(warmup)
    pairs_per_step = config.batch_size * config.grad_accum
    step_s, step_cpu_s = window.seconds / len(window.steps), window.cpu_seconds / len(window.steps)
    reference_s = clock.metric(0, "dpo/reference_s")  # the loop's own clock, from its start
    reference_cpu_s = clock.rows[0][1] - clock.started[1]  # ours: from the call (a copy of the model more)
    configured = DPOConfig(**params)
    run_steps = configured.max_steps or max(
        1, round(math.ceil(len(prefs) / configured.batch_size) / configured.grad_accum * configured.epochs)
    )
    run_pairs = pairs_per_step * run_steps
    # model FLOPs: the steps (policy forward + backward) and the reference pass (frozen forwards
    # before step 1), over the configured run as dpo_pairs_per_s counts it
    shape = model_shape(policy)
    steps_flops = flops_figures(
        shape, timed_calls(clock, window, counter), window.seconds, window.cpu_seconds, len(window.steps)
    )
    reference_flops, reference_tokens = forward_flops(
        shape, [call for call in counter.between(-math.inf, clock.rows[0][0]) if not call[1]]
    )
    run_flops = run_steps * steps_flops["model_flops_per_step"] + reference_flops
    flops = {
        **steps_flops,
        "model_flops_per_s": run_flops / (reference_s + run_steps * step_s),
        "model_flops_per_cpu_s": run_flops / (reference_cpu_s + run_steps * step_cpu_s),
        "step_model_flops_per_s": steps_flops["model_flops_per_s"],
        "step_model_flops_per_cpu_s": steps_flops["model_flops_per_cpu_s"],
        "reference_flops": reference_flops,
        "reference_tokens": reference_tokens,
    }
    return {
        "dpo_pairs_per_s": run_pairs / (reference_s + run_steps * step_s),
        "dpo_pairs_per_cpu_s": run_pairs / (reference_cpu_s + run_steps * step_cpu_s),
        "dpo_step_pairs_per_s": pairs_per_step / step_s,
        "dpo_reference_s": reference_s,
        "dpo_reference_cpu_s": reference_cpu_s,
        "dpo_run_steps": run_steps,
        "pairs_per_step": pairs_per_step,
        **timing(window),
        "flops": flops,
    }


# ---------------------------------------------------------------------------------------
# Tokenizer and policy


def scratch_tokenizer(inputs: Inputs) -> Any:
    """The run's tokenizer as the sft pipeline makes it (its own node), on the validated preferences."""
    from alignops.pipelines.sft.nodes import make_tokenizer

    name = "validated_preferences"
    found = name in inputs.catalog and inputs.catalog.exists(name)
    preferences = inputs.catalog.load(name) if found else inputs.preferences
    return make_tokenizer(inputs.demonstrations, preferences, inputs.params.get("model", {}))


def trained_policy(
    inputs: Inputs, policy: Path | None, tokenizer: Path | None, fresh: bool
) -> tuple[Any, Any, str] | None:
    """(SFT model, its tokenizer, where from): ``--policy``/``--tokenizer`` folders, else the
    catalog's ``sft_model``/``tokenizer`` when a ``kedro run`` made them; None for a fresh one."""
    if policy is not None:
        tokenizer_dir = tokenizer or policy
        return load_model(policy, "causal_lm"), load_tokenizer(str(tokenizer_dir)), str(policy)
    names = ("sft_model", "tokenizer")
    if fresh or not all(name in inputs.catalog and inputs.catalog.exists(name) for name in names):
        return None
    return inputs.catalog.load("sft_model"), inputs.catalog.load("tokenizer"), "catalog:sft_model"
