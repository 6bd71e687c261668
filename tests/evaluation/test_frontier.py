"""The reward–KL frontier: best-of-N nested over one draw, points paired with SFT, PPO's
curve from evaluation's own samples and the snapshots in between."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from alignops.evaluation.frontier import ReportConfig, best_of_n_curves, from_samples, frontier, ppo_curves
from alignops.evaluation.judges import Judge
from alignops.evaluation.policies import EvaluationConfig, best_of_n_kl_bound
from alignops.models.generation import GenerationConfig
from tests.helpers import TINY_LLAMA, make_tiny_policy

PROMPTS = ["where is my order", "reset my password", "refund my charge", "close my account", "change my plan"]
SETTINGS = GenerationConfig(max_new_tokens=6)
SAMPLING = EvaluationConfig(batch_size=64, seed=5)


def length_judge(name: str = "gold") -> Judge:
    """Scores a reply by its number of characters: cheap, deterministic, and different from the proxy."""
    return Judge(name, "likes long replies", lambda prompts, texts: np.array([float(len(t)) for t in texts]))


def vowel_proxy(prompts: list[str], texts: list[str]) -> np.ndarray:
    """Vowels, and a checksum's fraction to break ties: replies of a random tiny model are garbage."""
    return np.array([sum(c in "aeiou" for c in t) + zlib.crc32(t.encode()) / 2**32 for t in texts])


def test_best_of_n_is_nested_over_one_draw(sft_model, tokenizer):
    curves = best_of_n_curves(sft_model, tokenizer, length_judge(), vowel_proxy, PROMPTS, TINY_LLAMA, SETTINGS,
                              SAMPLING, (1, 2, 4))
    assert [c.n for c in curves] == [1, 2, 4] and [c.kl_kind for c in curves] == ["bound"] * 3
    assert [c.kl for c in curves] == [best_of_n_kl_bound(n) for n in (1, 2, 4)]
    # the proxy's pick among the first N draws can only get better as N grows, prompt by prompt
    assert np.all(np.diff(np.stack([c.proxy for c in curves]), axis=0) >= 0)
    assert curves[-1].proxy.mean() > curves[0].proxy.mean()


def test_points_are_paired_with_sft_and_the_first_must_be_ppos_step_zero(sft_model, tokenizer):
    table = pd.DataFrame({
        "policy": ["sft"] * 5 + ["dpo"] * 5,
        "prompt": PROMPTS * 2,
        "gold": [1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 2.0, 3.0, 5.0, 4.0],
        "rm": [0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 1.0, 1.0, 1.0, 1.0],
        "length": [3] * 10,
    })
    sft = from_samples(table, "sft", "gold", 0.0, "estimate", 1, "PPO step 0 (SFT)", step=0, curve="ppo")
    dpo = from_samples(table, "dpo", "gold", 1.2, "estimate", 1, "DPO")
    result = frontier([sft, dpo], length_judge(), seed=0)
    first, second = result["points"]
    assert first["win_rate_vs_sft"] == {"value": 0.5, "ci_low": 0.5, "ci_high": 0.5}  # against itself
    assert second["win_rate_vs_sft"]["value"] == pytest.approx((1 + 0.5 + 0.5 + 1 + 0) / 5)
    assert second["sqrt_kl"] == pytest.approx(np.sqrt(1.2)) and second["proxy"]["value"] == pytest.approx(1.0)
    assert result["n_prompts"] == 5 and result["judge"] == "gold"
    with pytest.raises(ValueError, match="step 0"):
        frontier([dpo, sft], length_judge(), seed=0)


def test_ppo_runs_from_sft_through_the_snapshots_to_the_last_step(sft_model, tokenizer):
    judge = length_judge()
    table = pd.DataFrame({"policy": ["sft"] * 5 + ["ppo"] * 5, "prompt": PROMPTS * 2, "gold": np.arange(10.0),
                          "rm": np.zeros(10), "length": [3] * 10})
    summary = {"judge": "gold", "policies": {"ppo": {"kl_to_sft": 0.7}}}
    loaded = []

    def snapshot(seed):
        def load():
            loaded.append(seed)
            return make_tiny_policy(tokenizer, seed=seed)
        return load

    curves = ppo_curves({5: snapshot(1), 10: snapshot(2), 20: snapshot(3)}, sft_model, 20, table, summary, tokenizer,
                        judge, vowel_proxy, PROMPTS, TINY_LLAMA, SETTINGS, SAMPLING)
    assert [c.step for c in curves] == [0, 5, 10, 20] and loaded == [1, 2]  # the last step is the evaluation's
    assert curves[0].kl == 0 and curves[-1].kl == 0.7 and curves[-1].judge.tolist() == [5, 6, 7, 8, 9]
    assert curves[1].kl_kind == "estimate" and curves[1].kl != 0  # another policy than SFT


def test_report_config_checks_its_values():
    assert ReportConfig(best_of_n=[1, 4]).best_of_n == (1, 4)
    for bad in ({"best_of_n": [4, 2]}, {"best_of_n": [0, 1]}, {"best_of_n": []}, {"consecutive": 0}):
        with pytest.raises(ValueError):
            ReportConfig(**bad)
