"""Sample each policy on the held-out prompts and score every response with every judge.

The judges (the gold judge on the embedded world, the audit judge everywhere) are used
here and nowhere in training: they show whether RLHF improved what the annotators
wanted. The training reward model's score is kept beside theirs, so reward hacking is
visible: the reward model's score rising while the judges' falls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.core import kl_k1, selective_log_softmax
from alignops.evaluation.judges import Judge, Scorer
from alignops.evaluation.statistics import wins
from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig, GenerationOutput, sample_responses
from alignops.models.scoring import response_logits

REFERENCE = "sft"
BEST_OF_N = "best_of_n"


@dataclass(frozen=True)
class EvaluationConfig:
    """How many samples evaluation draws and in what batches. Every policy samples with the
    run's ``generation`` settings (sampling, not greedy: a policy is a distribution, and
    greedy decoding hides how often it says something bad)."""

    samples_per_prompt: int = 1
    """Responses per prompt and policy; more lowers the variance of every figure."""
    best_of_n: int = 4
    """Best-of-N baseline: N SFT samples per prompt, the reward model keeps one. 0 skips it."""
    batch_size: int = 256
    """Prompts per generation / scoring batch. Large: a decode step's cost is mostly fixed
    per call on a CPU, so 256 rows sample ~2x faster per token than 64."""
    seed: int = 0
    """Sampling seed, and the bootstrap's: the same seed gives the same samples for the same
    models and the same resampled prompts, so a summary is reproducible to the byte."""

    def __post_init__(self) -> None:
        if min(self.samples_per_prompt, self.batch_size) < 1 or self.best_of_n < 0:
            raise ValueError("samples_per_prompt and batch_size must be positive, best_of_n >= 0")


@dataclass
class PolicySamples:
    """One policy's responses to the evaluation prompts, row i answering ``prompts[i]``.

    Rows are prompt-major: each prompt's ``samples_per_prompt`` rows are adjacent.
    """

    prompts: list[str]
    generation: GenerationOutput
    scores: dict[str, np.ndarray]
    """Judge name -> (N,) its scores of the responses."""
    rm: np.ndarray
    """(N,) normalised scores of the training reward model."""
    kl: np.ndarray | None
    """(N,) k1 estimate of KL to SFT per response (zeros for SFT itself); None for
    best-of-N, whose KL has an analytic bound instead (``best_of_n_kl_bound``)."""

    @property
    def texts(self) -> list[str]:
        return self.generation.texts

    @property
    def lengths(self) -> np.ndarray:
        return self.generation.response_mask.sum(1).numpy()


def sample_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    model_config: ModelConfig,
    generation: GenerationConfig,
    config: EvaluationConfig,
    seed: int,
) -> GenerationOutput:
    """One sampled response per (canonical) prompt, with the run's generation settings."""
    return sample_responses(
        model, tokenizer, prompts, model_config, generation, seed=seed, batch_size=config.batch_size
    )


@torch.no_grad()
def sampled_logprobs(
    model: PreTrainedModel, samples: GenerationOutput, temperature: float, batch_size: int
) -> torch.Tensor:
    """(N, R) log π_T(response token | prefix) with π_T = softmax(logits / T), 0 off the response mask.

    π_T is the distribution ``generate`` drew the samples from at ``temperature`` T (PPO
    takes its log-probs the same way, ``training.ppo._rollout_forward``).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(samples.query_ids), batch_size):
        rows = slice(start, start + batch_size)
        ids = samples.response_ids[rows].to(device)  # (b, R)
        mask = samples.response_mask[rows].to(device)
        query_ids, query_mask = samples.query_ids[rows].to(device), samples.query_mask[rows].to(device)
        logits = response_logits(model, query_ids, query_mask, ids, mask).float() / temperature  # (b, R, V), float32
        chunks.append(torch.where(mask.bool(), selective_log_softmax(logits, ids), 0.0).cpu())
    model.train(was_training)
    return torch.cat(chunks)


def kl_to_reference(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    samples: GenerationOutput,
    temperature: float,
    batch_size: int,
) -> np.ndarray:
    """(N,) Monte-Carlo KL(π_T ‖ π_sft,T) per sample: Σ_t log π_T − log π_sft,T over the policy's own tokens.

    Both at the sampling ``temperature``: the samples come from π_T, so only its
    log-probs make the mean an unbiased estimate of the sequence-level KL between the
    distributions evaluated (k1 estimator, Schulman 2020); single samples can be negative.
    """
    logp = sampled_logprobs(policy, samples, temperature, batch_size)  # (N, R)
    ref_logp = sampled_logprobs(reference, samples, temperature, batch_size)
    return kl_k1(logp, ref_logp).sum(1).numpy()


def win_rate(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """Share of prompts where ``candidate`` beats ``baseline``, ties counting half."""
    return float(wins(candidate, baseline).mean())


def judge_scores(judges: Sequence[Judge], prompts: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    """Judge name -> (N,) scores of ``texts`` answering ``prompts``."""
    return {judge.name: np.asarray(judge.score(prompts, texts), dtype=np.float64) for judge in judges}


def sample_and_score(
    model: PreTrainedModel,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    judges: Sequence[Judge],
    score_rm: Scorer,
    prompts: list[str],
    model_config: ModelConfig,
    generation: GenerationConfig,
    config: EvaluationConfig,
) -> PolicySamples:
    """``model``'s responses to ``prompts`` (prompt-major, as asked) with evaluation's seed, each
    scored by every judge and the reward model, with its KL to ``reference`` (zeros without one:
    the reference itself)."""
    out = sample_policy(model, tokenizer, prompts, model_config, generation, config, config.seed)
    kl = (
        np.zeros(len(prompts))
        if reference is None
        else kl_to_reference(model, reference, out, generation.temperature, config.batch_size)
    )
    return PolicySamples(prompts, out, judge_scores(judges, prompts, out.texts), score_rm(prompts, out.texts), kl)


def evaluate_policies(
    policies: dict[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    judges: Sequence[Judge],
    score_rm: Scorer,
    prompts: list[str],
    model_config: ModelConfig,
    generation: GenerationConfig,
    config: EvaluationConfig,
) -> dict[str, PolicySamples]:
    """Every policy's responses (and best-of-N's, from SFT and the reward model), each scored by
    every judge and by the reward model, with its KL to SFT.

    Every policy answers the same prompts with the same seed, so the figures of two
    policies are paired by prompt (and identical policies give identical samples).
    """
    if REFERENCE not in policies:
        raise ValueError(f"evaluation compares with the {REFERENCE!r} policy, which is missing")
    prompts = [p for p in prompts for _ in range(config.samples_per_prompt)]  # prompt-major
    samples: dict[str, PolicySamples] = {
        name: sample_and_score(
            model, None if name == REFERENCE else policies[REFERENCE], tokenizer, judges, score_rm, prompts,
            model_config, generation, config,
        )
        for name, model in policies.items()
    }
    if config.best_of_n:
        samples[BEST_OF_N] = best_of_n(
            policies[REFERENCE], tokenizer, judges, score_rm, prompts, model_config, generation, config
        )
    return samples


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-n ‖ base) <= log n − (n − 1)/n: the analytic figure (Stiennon et al. 2020),
    an upper bound on the true KL (Beirami et al. 2024)."""
    return float(np.log(n) - (n - 1) / n)


def best_of_n(
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    judges: Sequence[Judge],
    score_rm: Scorer,
    prompts: list[str],
    model_config: ModelConfig,
    generation: GenerationConfig,
    config: EvaluationConfig,
) -> PolicySamples:
    """N SFT samples per prompt; keep the one the reward model scores highest."""
    n = config.best_of_n
    repeated = [p for p in prompts for _ in range(n)]  # prompt-major: rows i*n .. i*n+n-1
    out = sample_policy(reference, tokenizer, repeated, model_config, generation, config, config.seed + 1)
    rm = np.asarray(score_rm(repeated, out.texts)).reshape(len(prompts), n)
    pick = np.arange(len(prompts)) * n + rm.argmax(1)  # (N,) row of each prompt's best sample
    index = torch.from_numpy(pick)
    chosen = GenerationOutput(
        query_ids=out.query_ids[index],
        query_mask=out.query_mask[index],
        response_ids=out.response_ids[index],
        response_mask=out.response_mask[index],
        texts=[out.texts[i] for i in pick],
        ended_with_eos=out.ended_with_eos[index],
    )
    return PolicySamples(prompts, chosen, judge_scores(judges, prompts, chosen.texts), rm.max(1), kl=None)
