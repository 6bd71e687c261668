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

import torch
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


class StepClock:
    """A ``log(metrics, step)`` callable: the first row of every step, with ``perf_counter`` time.

    Loops log training metrics right after the optimiser step; a later row for the same
    step (held-out evaluation) keeps the first row's time.
    """

    def __init__(self) -> None:
        self.rows: dict[int, tuple[float, dict[str, float]]] = {}

    def __call__(self, metrics: dict[str, Any], step: int) -> None:
        now = time.perf_counter()
        if step in self.rows:
            self.rows[step][1].update({k: float(v) for k, v in metrics.items()})
        else:
            self.rows[step] = (now, {k: float(v) for k, v in metrics.items()})

    def window(self, warmup: int) -> tuple[list[int], float]:
        """The timed steps (after ``warmup``) and the seconds from the end of step ``warmup`` to the last."""
        steps = sorted(self.rows)
        if warmup not in self.rows or steps[-1] <= warmup:
            raise RuntimeError(f"the loop logged steps {steps}; the clock needs step {warmup} and a later one")
        timed = [s for s in steps if s > warmup]
        return timed, self.rows[timed[-1]][0] - self.rows[warmup][0]

    def intervals(self, timed: list[int]) -> list[float]:
        """Seconds between each timed step's row and the previous step's row."""
        steps = sorted(self.rows)
        previous = {s: steps[i - 1] for i, s in enumerate(steps) if i}
        return [self.rows[s][0] - self.rows[previous[s]][0] for s in timed]

    def metric(self, step: int, name: str) -> float:
        return self.rows[step][1][name]


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
    from alignops.training.config import SFTConfig
    from alignops.training.sft import train_sft

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
    timed, seconds = clock.window(warmup)
    # The loop reports its own tokens/s per logged interval (real tokens, padding excluded);
    # weighting each step's rate by its duration gives total tokens / total time.
    durations = clock.intervals(timed)
    tokens = sum(clock.metric(s, "sft/tokens_per_s") * d for s, d in zip(timed, durations))
    figures = {
        "sft_tokens_per_s": tokens / sum(durations),
        "sft_steps_per_s": len(timed) / seconds,
        "measured_s": seconds,
        "rows_per_step": config.batch_size * config.grad_accum,
    }
    return figures, model


def bench_reward(inputs: Inputs, tokenizer, policy, steps: int, warmup: int) -> tuple[dict, Any]:
    from alignops.training.reward import train_reward_model
    from alignops.training.reward_config import RewardConfig

    config = make_config(RewardConfig, inputs.params.get("reward", {}), warmup + steps)
    clock = StepClock()
    reward_model = train_reward_model(policy, tokenizer, inputs.preferences, None, inputs.model_config, config, clock)
    timed, seconds = clock.window(warmup)
    pairs_per_step = config.batch_size * config.grad_accum
    figures = {
        "rm_pairs_per_s": pairs_per_step * len(timed) / seconds,
        "measured_s": seconds,
        "pairs_per_step": pairs_per_step,
    }
    return figures, reward_model


def untrained_reward_model(inputs: Inputs, tokenizer, policy) -> Any:
    """A reward model of the configured shape with a fresh head: PPO's timing does not depend on its weights."""
    from alignops.models.reward import RewardModel, build_reward_backbone
    from alignops.training.reward_config import RewardConfig

    config = RewardConfig(**inputs.params.get("reward", {}))
    torch.manual_seed(config.seed)
    model, rm_tokenizer = build_reward_backbone(config.base, policy, tokenizer)
    mc = inputs.model_config
    return RewardModel(
        model=model,
        tokenizer=rm_tokenizer,
        prompt_template=mc.prompt_template,
        response_prefix=mc.response_prefix,
        max_prompt_tokens=mc.max_prompt_tokens,
        max_response_tokens=mc.max_response_tokens,
    )


def bench_ppo(inputs: Inputs, tokenizer, policy, reward_model, steps: int, warmup: int) -> dict:
    from alignops.training.ppo import train_ppo
    from alignops.training.ppo_config import PPOConfig

    config = make_config(PPOConfig, inputs.params.get("ppo", {}), warmup + steps)
    clock = StepClock()
    prompts = ppo_prompts(inputs)
    train_ppo(policy, tokenizer, reward_model, prompts, inputs.model_config, config, clock)
    timed, seconds = clock.window(warmup)
    episodes = config.rollout_batch_size  # per iteration (one process)
    # per iteration: generated tokens (mean length x episodes) and the loop's generation time
    generated = [clock.metric(s, "ppo/mean_response_length") * episodes for s in timed]
    generation_s = [n / clock.metric(s, "ppo/generation_tokens_per_s") for s, n in zip(timed, generated)]
    return {
        "ppo_episodes_per_s": episodes * len(timed) / seconds,
        "ppo_generation_tokens_per_s": sum(generated) / sum(generation_s),
        "ppo_mean_response_tokens": sum(generated) / (episodes * len(timed)),
        "ppo_generation_share": sum(generation_s) / seconds,
        "measured_s": seconds,
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
    pairs = PreferencePairs(
        prefs["prompt"].astype(str).tolist(), prefs["chosen"].astype(str).tolist(), prefs["rejected"].astype(str).tolist()
    )
    clock = StepClock()
    train_dpo(policy, tokenizer, pairs, None, inputs.model_config, config, clock)
    timed, seconds = clock.window(warmup)
    pairs_per_step = config.batch_size * config.grad_accum
    step_s = seconds / len(timed)
    reference_s = clock.metric(0, "dpo/reference_s")
    configured = DPOConfig(**params)
    run_steps = configured.max_steps or max(
        1, round(math.ceil(len(prefs) / configured.batch_size) / configured.grad_accum * configured.epochs)
    )
    return {
        "dpo_pairs_per_s": pairs_per_step * run_steps / (reference_s + run_steps * step_s),
        "dpo_step_pairs_per_s": pairs_per_step / step_s,
        "dpo_reference_s": reference_s,
        "dpo_run_steps": run_steps,
        "measured_s": seconds,
        "pairs_per_step": pairs_per_step,
    }

# ---------------------------------------------------------------------------------------
# Tokenizer and policy


def scratch_tokenizer(inputs: Inputs) -> Any:
    """The run's tokenizer as the sft pipeline makes it (its own node), on the validated preferences."""
    from alignops.pipelines.sft.nodes import make_tokenizer

    name = "validated_preferences"
    preferences = inputs.catalog.load(name) if name in inputs.catalog and inputs.catalog.exists(name) else inputs.preferences
    return make_tokenizer(inputs.demonstrations, preferences, inputs.params.get("model", {}))


def trained_policy(inputs: Inputs, policy: Path | None, tokenizer: Path | None, fresh: bool) -> tuple[Any, Any, str] | None:
    """(SFT model, its tokenizer, where from): ``--policy``/``--tokenizer`` folders, else the
    catalog's ``sft_model``/``tokenizer`` when a ``kedro run`` made them; None for a fresh one."""
    if policy is not None:
        tokenizer_dir = tokenizer or policy
        return load_model(policy, "causal_lm"), load_tokenizer(str(tokenizer_dir)), str(policy)
    names = ("sft_model", "tokenizer")
    if fresh or not all(name in inputs.catalog and inputs.catalog.exists(name) for name in names):
        return None
    return inputs.catalog.load("sft_model"), inputs.catalog.load("tokenizer"), "catalog:sft_model"
