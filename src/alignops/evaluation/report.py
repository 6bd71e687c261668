"""The evaluation's table of samples and its one-page picture."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from alignops.evaluation.policies import PolicySamples


def samples_table(samples: dict[str, PolicySamples]) -> pd.DataFrame:
    """Every evaluated response with its scores, one row per (policy, prompt)."""
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "policy": name,
                    "prompt": s.prompts,
                    "response": s.texts,
                    "gold": s.gold,
                    "rm": s.rm,
                    "length": s.lengths,
                    "ended_with_eos": s.generation.ended_with_eos.numpy(),
                }
            )
            for name, s in samples.items()
        ],
        ignore_index=True,
    )


def plot_evaluation(summary: dict, table: pd.DataFrame) -> plt.Figure:
    """Gold score, win rate vs SFT, and RM-vs-gold per policy (reward hacking shows as drift)."""
    policies = list(summary["policies"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    ax = axes[0]
    gold = [table.loc[table.policy == p, "gold"] for p in policies]
    means = [g.mean() for g in gold]
    errors = [1.96 * g.std(ddof=1) / np.sqrt(max(len(g), 1)) for g in gold]
    ax.bar(policies, means, yerr=errors, color=colours[: len(policies)], capsize=4)
    ax.set(title="Gold judge score (mean, 95% CI)", ylabel="gold score")

    ax = axes[1]
    rates = [summary["policies"][p]["gold_win_rate_vs_sft"] for p in policies]
    ax.bar(policies, rates, color=colours[: len(policies)])
    ax.axhline(0.5, color="black", linewidth=1, linestyle="--")
    ax.set(title="Gold win rate vs SFT (ties = 1/2)", ylim=(0, 1))
    for i, rate in enumerate(rates):
        ax.text(i, rate + 0.02, f"{rate:.2f}", ha="center")

    ax = axes[2]
    for colour, policy in zip(colours, policies, strict=False):  # more colours than policies
        rows = table[table.policy == policy]
        ax.scatter(rows["rm"], rows["gold"], s=8, alpha=0.45, color=colour, label=policy)
    ax.set(title="Reward model vs gold judge", xlabel="RM score (normalised)", ylabel="gold score")
    ax.legend(markerscale=2)
    fig.tight_layout()
    return fig
