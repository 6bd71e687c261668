"""The over-optimisation alarm: the proxy still rising while the judge has turned down.

Along PPO's checkpoints the training reward model's score (the proxy) and the judge's
(gold, or the audit judge) rise together at first; past some KL the proxy keeps rising
while the judge falls, because the policy has found what the reward model overrates (Gao,
Schulman and Hilton 2022). The alarm compares every checkpoint after the judge's peak
with the peak, per prompt, on the same prompts: a checkpoint is over-optimised when the
paired interval of its judge change lies wholly below 0 and that of its proxy change
wholly above 0. ``consecutive`` such checkpoints in a row fire the alarm; the peak, not
the last checkpoint, is then what the registry is offered.
"""

from __future__ import annotations

import numpy as np

from alignops.evaluation.statistics import Interval, bootstrap_indices, mean_interval


def check(steps: list[int], judge: np.ndarray, proxy: np.ndarray, consecutive: int, seed: int,
          judge_name: str = "judge") -> dict:
    """The verdict (spec: ``overoptimisation.json``) for checkpoints ``steps`` (increasing),
    ``judge`` and ``proxy`` (C, P): each checkpoint's per-prompt scores on the same P prompts."""
    judge, proxy = np.asarray(judge, dtype=np.float64), np.asarray(proxy, dtype=np.float64)
    if judge.shape != proxy.shape or judge.shape[0] != len(steps) or not len(steps):
        raise ValueError(f"need one row of scores per checkpoint: {len(steps)} steps, {judge.shape}, {proxy.shape}")
    if list(steps) != sorted(set(steps)):
        raise ValueError(f"checkpoint steps must increase, got {steps}")
    indices = bootstrap_indices(judge.shape[1], seed=seed)  # (resamples, P), shared: every change is paired
    peak = int(np.argmax(judge.mean(axis=1)))  # the first of equal means: the earlier, closer to SFT
    rows, run, longest = [], 0, 0
    for c in range(peak + 1, len(steps)):
        judge_change = mean_interval(judge[c] - judge[peak], indices)
        proxy_change = mean_interval(proxy[c] - proxy[peak], indices)
        overoptimised = judge_change.high < 0 < proxy_change.low
        run = run + 1 if overoptimised else 0
        longest = max(longest, run)
        rows.append({"step": int(steps[c]), "judge_change": judge_change.as_dict(),
                     "proxy_change": proxy_change.as_dict(), "overoptimised": overoptimised})
    fired = longest >= consecutive
    peak_step, last_step = int(steps[peak]), int(steps[-1])
    return {
        "fired": fired,
        "judge": judge_name,
        "peak_step": peak_step,
        "last_step": last_step,
        "offered_step": peak_step if fired else last_step,
        "consecutive": consecutive,
        "message": _message(fired, judge_name, peak_step, last_step, rows, consecutive),
        "checkpoints": rows,
    }


def _message(fired: bool, judge: str, peak: int, last: int, rows: list[dict], consecutive: int) -> str:
    if fired:
        worst = min(rows, key=lambda row: row["judge_change"]["value"])
        change = Interval(*(worst["judge_change"][k] for k in ("value", "ci_low", "ci_high")))
        proxy = Interval(*(worst["proxy_change"][k] for k in ("value", "ci_low", "ci_high")))
        return (
            f"over-optimisation: the {judge} judge's score peaked at PPO step {peak} and fell while the reward "
            f"model's rose (step {worst['step']}: {judge} {change}, reward model {proxy}, vs the peak); "
            f"the registry is offered step {peak}, not step {last}"
        )
    if not rows:
        return f"no over-optimisation: the {judge} judge's score is highest at the last checkpoint (step {last})"
    flagged = sum(row["overoptimised"] for row in rows)
    return (
        f"no over-optimisation: the {judge} judge's score peaked at PPO step {peak}; {flagged} of the "
        f"{len(rows)} later checkpoints fell significantly below it with the reward model above it, "
        f"fewer than the {consecutive} in a row that fire the alarm"
    )
