"""DPO quality and speed on the embedded world: is the DPO policy better than SFT by the gold judge?

Loads the catalog's outputs (``sft_model``, ``dpo_model``, ``tokenizer``, ``eval_prompts``,
``gold_judge_spec``, ``dpo_history``), samples one response per evaluation prompt from
each policy with the run's sampling settings (``params:generation``: temperature
0.7; the same seed for both), scores both with the gold judge and prints gold means, the
win rate of DPO over SFT (ties count half), a Monte-Carlo KL(DPO ‖ SFT), response
lengths, degenerate-reply rates and DPO's timing. Run from the repository root after
``kedro run --pipelines data_generation,ingestion,data_validation,sft,dpo``::

    python bench/dpo_quality.py                 # the catalog's dpo_model
    python bench/dpo_quality.py --retrain       # train DPO afresh (timed), then measure
    python bench/dpo_quality.py --retrain --set beta=0.05 --set epochs=1 --seeds 0 1 2

The gold judge is the evaluation's truth; it is never a training input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

for name, value in {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ.setdefault(name, value)

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python bench/dpo_quality.py` puts bench/ there
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kedro.framework.session import KedroSession  # noqa: E402
from kedro.framework.startup import bootstrap_project  # noqa: E402

from alignops.evaluation.policies import EvaluationConfig, kl_to_reference, sample_policy, win_rate  # noqa: E402
from alignops.models.config import ModelConfig  # noqa: E402
from alignops.models.generation import GenerationConfig  # noqa: E402
from alignops.training.common import MetricHistory  # noqa: E402
from alignops.training.dpo import PreferencePairs, train_dpo  # noqa: E402
from alignops.training.dpo_config import DPOConfig  # noqa: E402
from alignops.world import GoldJudge  # noqa: E402
from bench.ppo_quality import parse_value  # noqa: E402  (`--set` values: 5e-4 is a float)

REPO_ROOT = Path(__file__).resolve().parents[1]


def pairs(frame) -> PreferencePairs:
    return PreferencePairs(frame["prompt"].tolist(), frame["chosen"].tolist(), frame["rejected"].tolist())


def retrain(catalog, sft_model, tokenizer, model_config: ModelConfig, overrides: dict) -> tuple:
    """Train DPO from ``sft_model`` with ``params:dpo`` (+ overrides); returns (model, history, wall s, cpu s)."""
    config = DPOConfig(**{**catalog.load("params:dpo"), **overrides})
    history = MetricHistory()
    wall, cpu = time.perf_counter(), time.process_time()
    model = train_dpo(
        sft_model,
        tokenizer,
        pairs(catalog.load("preferences_train")),
        pairs(catalog.load("preferences_heldout")),
        model_config,
        config,
        history,
    )
    return model, history, time.perf_counter() - wall, time.process_time() - cpu


def degenerate_share(judge: GoldJudge, prompts: list[str], texts: list[str]) -> tuple[float, float]:
    """Shares of looping replies (distinct-trigram ratio under the judge's floor) and near-empty ones."""
    features = judge.features(prompts, texts)
    looping = features["distinct_3"] < judge.weights.repetition_floor
    near_empty = features["n_words"] < judge.weights.near_empty_words
    return float(looping.mean()), float(near_empty.mean())


def measure(sft_model, dpo_model, tokenizer, prompts, judge, model_config, generation, eval_config, seed) -> dict:
    """One sampled response per prompt from each policy (same seed), scored by the gold judge."""
    sft = sample_policy(sft_model, tokenizer, prompts, model_config, generation, eval_config, seed)
    dpo = sample_policy(dpo_model, tokenizer, prompts, model_config, generation, eval_config, seed)
    gold_sft, gold_dpo = judge.score(prompts, sft.texts), judge.score(prompts, dpo.texts)
    looping, near_empty = degenerate_share(judge, prompts, dpo.texts)
    return {
        "gold_sft": float(np.mean(gold_sft)),
        "gold_dpo": float(np.mean(gold_dpo)),
        "win_rate": win_rate(np.asarray(gold_dpo), np.asarray(gold_sft)),
        "kl_dpo_sft": float(kl_to_reference(
            dpo_model, sft_model, dpo, generation.temperature, eval_config.batch_size
        ).mean()),
        "len_sft": float(sft.response_mask.sum(1).float().mean()),
        "len_dpo": float(dpo.response_mask.sum(1).float().mean()),
        "words_sft": float(np.mean([len(t.split()) for t in sft.texts])),
        "words_dpo": float(np.mean([len(t.split()) for t in dpo.texts])),
        "eos_dpo": float(dpo.ended_with_eos.float().mean()),
        "looping_dpo": looping,
        "near_empty_dpo": near_empty,
        "example": (prompts[0], sft.texts[0], dpo.texts[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro environment (default: the project's)")
    parser.add_argument("--retrain", action="store_true", help="train DPO afresh from sft_model and time it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override params:dpo")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="sampling seeds (default: evaluation's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}

    bootstrap_project(REPO_ROOT)
    with KedroSession.create(project_path=REPO_ROOT, env=args.env) as session:
        catalog = session.load_context().catalog
        model_config = ModelConfig(**catalog.load("params:model"))
        generation = GenerationConfig(**catalog.load("params:generation"))
        eval_config = EvaluationConfig(**catalog.load("params:evaluation"))
        tokenizer, sft_model = catalog.load("tokenizer"), catalog.load("sft_model")
        judge = GoldJudge.from_spec(catalog.load("gold_judge_spec"))
        prompts = catalog.load("eval_prompts")["prompt"].tolist()
        if args.retrain or overrides:
            dpo_model, history, wall_s, cpu_s = retrain(catalog, sft_model, tokenizer, model_config, overrides)
            rows = history.rows
            print(f"DPO wall time {wall_s:.1f} s, process CPU time {cpu_s:.1f} s ({torch.get_num_threads()} threads)")
        else:
            dpo_model, rows = catalog.load("dpo_model"), catalog.load("dpo_history")

    steps = [r for r in rows if "loss/dpo" in r]
    evals = [r for r in rows if "eval/dpo/loss" in r]
    reference_s = next((r["dpo/reference_s"] for r in rows if "dpo/reference_s" in r), float("nan"))
    print(
        f"DPO run: {len(steps)} steps, {steps[-1]['dpo/elapsed_s']:.1f} s in the loop "
        f"(reference pass {reference_s:.1f} s), median {np.median([r['dpo/pairs_per_s'] for r in steps]):.0f} pairs/s"
    )
    print(
        f"  train: loss {steps[-1]['loss/dpo']:.3f} acc {steps[-1]['rewards/accuracies']:.2f} "
        f"margin {steps[-1]['rewards/margins']:.2f}; held-out: loss {evals[-1]['eval/dpo/loss']:.3f} "
        f"acc {evals[-1]['eval/dpo/rewards/accuracies']:.3f} margin {evals[-1]['eval/dpo/rewards/margins']:.2f}"
    )

    results = []
    for seed in args.seeds if args.seeds is not None else [eval_config.seed]:
        start = time.perf_counter()
        r = measure(sft_model, dpo_model, tokenizer, prompts, judge, model_config, generation, eval_config, seed)
        results.append(r)
        print(
            f"seed {seed}: gold SFT {r['gold_sft']:.3f}  DPO {r['gold_dpo']:.3f}  win rate {r['win_rate']:.3f}  "
            f"KL {r['kl_dpo_sft']:.2f} nats  tokens SFT {r['len_sft']:.1f} DPO {r['len_dpo']:.1f}  "
            f"words SFT {r['words_sft']:.1f} DPO {r['words_dpo']:.1f}  EOS {r['eos_dpo']:.2f}  "
            f"looping {r['looping_dpo']:.3f} near-empty {r['near_empty_dpo']:.3f}  "
            f"({time.perf_counter() - start:.0f} s)"
        )
    if len(results) > 1:
        mean = {k: np.mean([r[k] for r in results]) for k in results[0] if k != "example"}
        print("mean: " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    prompt, sft_text, dpo_text = results[0]["example"]
    print(f"\nprompt: {prompt}\n  SFT: {sft_text}\n  DPO: {dpo_text}")


if __name__ == "__main__":
    main()
