"""The evaluation's table of samples and its one-page picture."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from alignops.evaluation.policies import PolicySamples


def samples_table(samples: dict[str, PolicySamples]) -> pd.DataFrame:
    """Every evaluated response with its scores, one row per (policy, sample): a column per
    judge (``gold``, ``audit``) and ``rm``, the training reward model's."""
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "policy": name,
                    "prompt": s.prompts,
                    "response": s.texts,
                    **s.scores,
                    "rm": s.rm,
                    "length": s.lengths,
                    "ended_with_eos": s.generation.ended_with_eos.numpy(),
                }
            )
            for name, s in samples.items()
        ],
        ignore_index=True,
    )


def _bars(ax, figures: list[dict], offset: float, width: float, **style) -> None:
    """Bars at ``value`` with error bars from ``ci_low`` to ``ci_high``."""
    values = np.array([f["value"] for f in figures])
    errors = np.array([[f["value"] - f["ci_low"] for f in figures], [f["ci_high"] - f["value"] for f in figures]])
    ax.bar(np.arange(len(figures)) + offset, values, width, yerr=errors, capsize=4, **style)


def plot_evaluation(summary: dict, table: pd.DataFrame) -> plt.Figure:
    """The deciding judge's score and every judge's win rate vs SFT per policy, each with its
    interval, and the reward model against the deciding judge (reward hacking shows as drift)."""
    policies = list(summary["policies"])
    judge, judges = summary["judge"], list(summary["judges"])
    judges = [judge, *(j for j in judges if j != judge)]  # the deciding judge's bars first
    level = round(100 * summary["interval"]["level"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks = np.arange(len(policies))

    ax = axes[0]
    figures = [summary["policies"][p][f"{judge}_mean"] for p in policies]
    _bars(ax, figures, 0.0, 0.8, color=colours[: len(policies)])
    ax.set(title=f"{judge.capitalize()} judge score (mean, {level}% CI)", ylabel=f"{judge} score", xticks=ticks)
    ax.set_xticklabels(policies)

    ax = axes[1]
    width = 0.8 / len(judges)
    for i, name in enumerate(judges):
        figures = [summary["policies"][p][f"{name}_win_rate_vs_sft"] for p in policies]
        offset = (i - (len(judges) - 1) / 2) * width
        label = f"{name} (decides)" if name == judge else name
        _bars(
            ax,
            figures,
            offset,
            width,
            color=colours[i % len(colours)],
            alpha=1.0 if name == judge else 0.5,
            label=label,
        )
        for x, f in zip(ticks + offset, figures, strict=True):
            ax.text(x, f["ci_high"] + 0.02, f"{f['value']:.2f}", ha="center", fontsize=8)
    ax.axhline(0.5, color="black", linewidth=1, linestyle="--")
    ax.set(title=f"Win rate vs SFT by the {judge} judge ({level}% CI, ties = 1/2)", ylim=(0, 1.1), xticks=ticks)
    ax.set_xticklabels(policies)
    ax.legend(title="judge", loc="upper left")

    ax = axes[2]
    for colour, policy in zip(colours, policies, strict=False):  # more colours than policies
        rows = table[table.policy == policy]
        ax.scatter(rows["rm"], rows[judge], s=8, alpha=0.45, color=colour, label=policy)
    ax.set(title=f"Reward model vs {judge} judge", xlabel="RM score (normalised)", ylabel=f"{judge} score")
    ax.legend(markerscale=2)
    fig.tight_layout()
    return fig
