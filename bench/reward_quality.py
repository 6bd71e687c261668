"""How good and how fast is the reward model? Held-out pairwise accuracy against gold and the panel.

    python bench/reward_quality.py            # score the reward model already in the catalog
    python bench/reward_quality.py --run      # (re)train it first: `reward` pipeline, timed
    python bench/reward_quality.py --run --project /tmp/copy --env local

Needs the upstream outputs (``preferences_train``/``preferences_heldout``, ``sft_model``,
``tokenizer``, ``gold_judge_spec``): ``kedro run --pipelines
data_generation,ingestion,data_validation,sft`` once. Gold accuracy: for each held-out
pair the gold judge prefers the reply it scores higher (gold ties are skipped) and the
reward model is right when it orders the pair the same way. Panel accuracy: the reward
model scores the annotator's ``chosen`` above ``rejected``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

for name, value in {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ.setdefault(name, value)

from kedro.framework.session import KedroSession  # noqa: E402
from kedro.framework.startup import bootstrap_project  # noqa: E402

from alignops.world.gold import GoldJudge  # noqa: E402


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pairwise_accuracy(heldout, rm_chosen: np.ndarray, rm_rejected: np.ndarray, judge: GoldJudge) -> dict:
    prompts = heldout["prompt"].astype(str).tolist()
    gold_gap = judge.score(prompts, heldout["chosen"].astype(str).tolist()) - judge.score(
        prompts, heldout["rejected"].astype(str).tolist()
    )
    decided = gold_gap != 0
    rm_gap = rm_chosen - rm_rejected
    return {
        "heldout_pairs": int(len(heldout)),
        "gold_pairs": int(decided.sum()),
        "gold_accuracy": float(np.mean(np.sign(rm_gap[decided]) == np.sign(gold_gap[decided]))),
        "panel_accuracy": float(np.mean(rm_gap > 0)),
        "panel_gold_agreement": float(np.mean(gold_gap[decided] > 0)),  # the annotators' own score
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="train the reward model first (timed)")
    parser.add_argument("--project", default=str(Path(__file__).resolve().parents[1]), help="Kedro project root")
    parser.add_argument("--env", default=None, help="Kedro environment (default: local)")
    args = parser.parse_args()

    bootstrap_project(Path(args.project))
    timing = {}
    if args.run:
        with KedroSession.create(project_path=Path(args.project), env=args.env) as session:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            session.run(pipeline_names=["reward"])
            timing = {"stage_wall_s": time.perf_counter() - wall, "stage_cpu_s": _cpu_seconds() - cpu}

    with KedroSession.create(project_path=Path(args.project), env=args.env) as session:
        catalog = session.load_context().catalog
        reward_model = catalog.load("reward_model")
        heldout = catalog.load("preferences_heldout")
        judge = GoldJudge.from_spec(catalog.load("gold_judge_spec"))
        history = catalog.load("reward_history")

    prompts = heldout["prompt"].astype(str).tolist()
    wall = time.perf_counter()
    rm_chosen = reward_model.score(prompts, heldout["chosen"].astype(str).tolist()).numpy()
    rm_rejected = reward_model.score(prompts, heldout["rejected"].astype(str).tolist()).numpy()
    timing["score_pairs_per_s"] = len(heldout) / (time.perf_counter() - wall)

    last = {k: v for row in history for k, v in row.items()}  # the latest value of every metric
    report = {
        **pairwise_accuracy(heldout, rm_chosen, rm_rejected, judge),
        "train_steps": int(max(row["step"] for row in history)),
        "final_train_accuracy": last.get("reward/accuracy"),
        "final_eval_reward_accuracy": last.get("eval/reward/accuracy"),
        "norm_mean": reward_model.mean,
        "norm_std": reward_model.std,
        **timing,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
