"""Our training loops on a clock: each stage's loop, as its Kedro node calls it, timed step by step.

``bench/run.py`` drives these; this module knows how to feed each loop and how to
read a throughput off the log rows it writes. The clock is the loop's own ``log``
callable with a timestamp: loops log right after each optimiser step, so nothing is
patched into them.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from pathlib import Path
from typing import Any

from kedro.config import MissingConfigException, OmegaConfigLoader
from kedro.io import DataCatalog

from alignops.models.config import ModelConfig
from alignops.models.loading import load_model
from alignops.models.tokenizer import load_tokenizer
from alignops.settings import CONFIG_LOADER_ARGS

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
# Stages: each runs the stage's loop on a StepClock and returns its figures


def bench_sft(inputs: Inputs, tokenizer, steps: int, warmup: int) -> tuple[dict, Any]:
    from alignops.training.sft import train_sft
    from alignops.training.sft_config import SFTConfig

    config = make_config(SFTConfig, inputs.params.get("sft", {}), warmup + steps)
    clock = StepClock()
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
    }
    return figures, model


def bench_reward(inputs: Inputs, tokenizer, policy, steps: int, warmup: int) -> tuple[dict, Any]:
    from alignops.training.reward import train_reward_model
    from alignops.training.reward_config import RewardConfig

    config = make_config(RewardConfig, inputs.params.get("reward", {}), warmup + steps)
    clock = StepClock()
    reward_model = train_reward_model(policy, tokenizer, inputs.preferences, None, inputs.model_config, config, clock)
    window = clock.window(warmup)
    pairs = config.batch_size * config.grad_accum * len(window.steps)
    figures = {
        "rm_pairs_per_s": pairs / window.seconds,
        "rm_pairs_per_cpu_s": pairs / window.cpu_seconds,
        "pairs_per_step": config.batch_size * config.grad_accum,
        **timing(window),
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
    return {
        "dpo_pairs_per_s": run_pairs / (reference_s + run_steps * step_s),
        "dpo_pairs_per_cpu_s": run_pairs / (reference_cpu_s + run_steps * step_cpu_s),
        "dpo_step_pairs_per_s": pairs_per_step / step_s,
        "dpo_reference_s": reference_s,
        "dpo_reference_cpu_s": reference_cpu_s,
        "dpo_run_steps": run_steps,
        "pairs_per_step": pairs_per_step,
        **timing(window),
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
