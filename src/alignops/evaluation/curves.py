"""One picture of a training stage's curves, from the metric rows its loop logged."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless: rendered to a file (and an MLflow artifact), never a window
import matplotlib.pyplot as plt

PANELS: dict[str, list[tuple[str, list[str]]]] = {
    "sft": [
        ("loss", ["loss/sft", "eval/sft/loss"]),
        ("held-out perplexity", ["eval/sft/perplexity"]),
        ("learning rate", ["sft/lr"]),
        ("gradient norm", ["sft/grad_norm"]),
    ],
    "reward": [
        ("loss", ["loss/reward", "eval/reward/loss"]),
        ("pair accuracy", ["reward/accuracy", "eval/reward/accuracy"]),
        ("reward margin", ["reward/margin", "eval/reward/margin"]),
        ("learning rate", ["reward/lr"]),
    ],
    "ppo": [
        ("reward", ["objective/scores", "objective/rlhf_reward"]),
        ("KL to the SFT policy", ["objective/kl"]),
        ("losses", ["loss/policy", "loss/value"]),
        ("clip fraction", ["policy/clipfrac", "val/clipfrac"]),
        ("response length (tokens)", ["ppo/mean_response_length"]),
        ("value explained variance", ["val/explained_variance"]),
    ],
    "dpo": [
        ("loss", ["loss/dpo", "eval/dpo/loss"]),
        ("implicit-reward accuracy", ["rewards/accuracies", "eval/dpo/rewards/accuracies"]),
        ("implicit-reward margin", ["rewards/margins", "eval/dpo/rewards/margins"]),
        ("log-probabilities", ["logps/chosen", "logps/rejected"]),
    ],
}
# The audit judge is trained by the reward loop, its metrics renamed reward -> audit_judge.
PANELS["audit_judge"] = [
    (title, [name.replace("reward", "audit_judge") for name in names]) for title, names in PANELS["reward"]
]
"""Per stage: (panel title, metric names drawn in it). Names a run did not log are skipped."""

TITLES = {
    "sft": "Supervised fine-tuning",
    "reward": "Reward model",
    "audit_judge": "Audit judge (reward model on the audit split)",
    "ppo": "PPO",
    "dpo": "DPO",
}


def plot_training_curves(rows: list[dict], stage: str) -> plt.Figure:
    """A grid of ``PANELS[stage]``, each metric against the step it was logged at.

    Training metrics are drawn as lines, held-out (``eval/``) ones with markers: they are
    logged every few steps and a line between them would suggest values never measured.
    """
    if stage not in PANELS:
        raise ValueError(f"no curves defined for stage {stage!r}; expected one of {sorted(PANELS)}")
    panels = PANELS[stage]
    columns = 2 if len(panels) <= 4 else 3
    n_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(5.2 * columns, 3.6 * n_rows))
    for ax, (title, names) in zip(axes.flat, panels, strict=False):  # spare axes are hidden below
        for name in names:
            points = [(row["step"], row[name]) for row in rows if name in row]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            style = {"marker": "o", "markersize": 4} if name.startswith("eval/") else {"linewidth": 1.4}
            ax.plot(steps, values, label=name, **style)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{TITLES[stage]}: training curves ({len(rows)} logged rows)")
    fig.tight_layout()
    return fig


# One module-level function per stage: Kedro's ParallelRunner pickles nodes, and closures
# do not pickle.
def plot_sft_curves(sft_history: list[dict]) -> plt.Figure:
    return plot_training_curves(sft_history, "sft")


def plot_reward_curves(reward_history: list[dict]) -> plt.Figure:
    return plot_training_curves(reward_history, "reward")


def plot_ppo_curves(ppo_history: list[dict]) -> plt.Figure:
    return plot_training_curves(ppo_history, "ppo")


def plot_dpo_curves(dpo_history: list[dict]) -> plt.Figure:
    return plot_training_curves(dpo_history, "dpo")
