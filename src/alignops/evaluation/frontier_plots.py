"""The report's pictures: the reward/KL frontier and the per-policy score and length distributions.

Reward hacking shows as a gap that opens along the frontier: the proxy (the reward model PPO
trained against) keeps rising with KL while the deciding judge peaks and falls. Both are drawn
against √KL to SFT, the axis on which Gao et al. (2023) found both curves close to simple
functional forms, so a peak is easy to see by eye.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless: rendered into the report as a PNG, never a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

_CYCLE = plt.rcParams["axes.prop_cycle"].by_key()["color"]
POLICY_COLOURS = dict(zip(("sft", "ppo", "dpo", "best_of_n"), _CYCLE, strict=False))
"""One colour per policy, in the summary's policy order, so a policy has the colour it has in
``report.plot_evaluation``'s bars."""
SWEEP_ALPHA = 0.45
"""Best-of-N and DPO in a sweep: the same in every run up to noise, so drawn lighter than the
PPO lines being compared."""
KL_AXIS = "√KL to SFT (nats^½)"


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes; the figure is closed, so a report of many pictures does not hold them
    all in pyplot's registry. No ``Software`` text chunk: the page must name no web address."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _errorbar(ax, points: list[dict], key: str, **style):
    """``points``' ``key`` interval against √KL, as markers with vertical error bars."""
    x = np.array([p["sqrt_kl"] for p in points])
    y = np.array([p[key]["value"] for p in points])
    low = y - np.array([p[key]["ci_low"] for p in points])
    high = np.array([p[key]["ci_high"] for p in points]) - y
    return ax.errorbar(x, y, yerr=np.vstack([low, high]), capsize=3, **style)


def _annotate(ax, points: list[dict], key: str, texts: list[str], colour: str) -> None:
    for point, text in zip(points, texts, strict=True):
        xy = (point["sqrt_kl"], point[key]["value"])
        ax.annotate(text, xy, textcoords="offset points", xytext=(4, 5), fontsize=7, color=colour)


def _by_policy(frontier: dict) -> dict[str, list[dict]]:
    points = frontier["points"]
    return {policy: [p for p in points if p["policy"] == policy] for policy in ("ppo", "best_of_n", "dpo")}


def _draw_run(ax, frontier: dict, key: str, label: str | None, colour: str | None) -> None:
    """One run's PPO checkpoints, best-of-N and DPO in one panel. ``label``/``colour`` given: a
    sweep, where the run's PPO line carries its label and the baselines are drawn lighter in its
    colour; only its last checkpoint is annotated, since every run's steps on top of each other
    would hide the lines."""
    sweep = colour is not None
    points = _by_policy(frontier)
    ppo_colour = colour or POLICY_COLOURS["ppo"]
    if points["ppo"]:
        ppo = points["ppo"]
        _errorbar(ax, ppo, key, fmt="-o", markersize=4, color=ppo_colour, label=label or "PPO checkpoints")
        shown = ppo[-1:] if sweep else ppo
        _annotate(ax, shown, key, [f"step {p['step']}" if sweep else str(p["step"]) for p in shown], ppo_colour)
    baseline_style = {"alpha": SWEEP_ALPHA} if sweep else {}
    if points["best_of_n"]:
        bon_colour = colour or POLICY_COLOURS["best_of_n"]
        bon_label = None if sweep else "best-of-N (KL bound)"
        _errorbar(ax, points["best_of_n"], key, fmt="--s", markersize=4, color=bon_colour, label=bon_label,
                  **baseline_style)
        _annotate(ax, points["best_of_n"], key, [f"N={p['n']}" for p in points["best_of_n"]], bon_colour)
    for point in points["dpo"]:
        _errorbar(ax, [point], key, fmt="D", markersize=8, color=colour or POLICY_COLOURS["dpo"],
                  markeredgecolor="black", label=None if sweep else "DPO", **baseline_style)


def _mark_peak(ax, frontier: dict, key: str, alarm: dict, run: str) -> None:
    """A star on the checkpoint the alarm found the judge's peak at; ``run`` names it in a sweep."""
    peak = next((p for p in _by_policy(frontier)["ppo"] if p["step"] == alarm["peak_step"]), None)
    if peak is None:
        raise ValueError(f"the alarm's peak step {alarm['peak_step']} is not a PPO checkpoint of the first run")
    offered = " (offered to the registry)" if alarm["offered_step"] == alarm["peak_step"] else ""
    ax.plot(peak["sqrt_kl"], peak[key]["value"], marker="*", markersize=18, color="red", markeredgecolor="black",
            linestyle="none", zorder=5, label=f"{run}peak, step {alarm['peak_step']}{offered}")


def _sweep_legend_handles() -> list[Line2D]:
    """Grey stand-ins for the baselines' styles: one legend entry each instead of one per run."""
    return [
        Line2D([], [], color="grey", linestyle="--", marker="s", markersize=4, label="best-of-N (KL bound)"),
        Line2D([], [], color="grey", linestyle="none", marker="D", markersize=7, label="DPO"),
    ]


def plot_frontier(runs: list[tuple[str, dict]], alarm: dict | None = None) -> Figure:
    """The deciding judge's mean (left) and the proxy's (right) against √KL to SFT, each point
    with its interval, for every run in ``runs`` (label, frontier). One run: a colour per method.
    Several (a sweep over, say, ``kl_coef``): a colour per run. A fired ``alarm`` is about the
    first run: its peak is starred on both panels, where the proxy still climbs past it."""
    first = runs[0][1]
    level = round(100 * first["interval"]["level"])
    sweep = len(runs) > 1
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    panels = [(axes[0], "judge", f"{first['judge']} judge (decides)", f"{first['judge']} score"),
              (axes[1], "proxy", "proxy: training reward model", f"{first['proxy']} score (normalised)")]
    for ax, key, name, unit in panels:
        for i, (label, frontier) in enumerate(runs):
            colour = _CYCLE[i % len(_CYCLE)] if sweep else None
            _draw_run(ax, frontier, key, label if sweep else None, colour)
        if alarm is not None and alarm["fired"]:
            _mark_peak(ax, first, key, alarm, f"{runs[0][0]} " if sweep else "")
        ax.set(title=f"{name}: mean score, {level}% CI", xlabel=KL_AXIS, ylabel=unit)
        ax.grid(alpha=0.3)
    handles, _ = axes[0].get_legend_handles_labels()
    axes[0].legend(handles=handles + (_sweep_legend_handles() if sweep else []), fontsize=8,
                   title="runs" if sweep else None)
    fig.tight_layout()
    return fig


def _violins(ax, datasets: list[np.ndarray], colours: list[str]) -> None:
    """A violin per dataset, its mean as a white dot. A constant dataset (every score equal) has no
    density to draw, so it is a bar at its value; an empty one (no scores) is left blank."""
    for position, (data, colour) in enumerate(zip(datasets, colours, strict=True)):
        if len(data) == 0:
            continue
        if np.ptp(data) == 0:
            ax.hlines(data[0], position - 0.3, position + 0.3, color=colour, linewidth=3)
        else:
            body = ax.violinplot([data], positions=[position], widths=0.8, showextrema=False)["bodies"][0]
            body.set(facecolor=colour, edgecolor="black", alpha=0.6)
        ax.scatter([position], [data.mean()], color="white", edgecolor="black", zorder=3, s=25)


def plot_distributions(samples: pd.DataFrame, judge: str) -> Figure:
    """Per policy, the distribution of the ``judge``'s score and of response length (tokens), in
    the table's policy order. A mean hides what a distribution shows: a policy that found one
    long template the reward model loves is a narrow, shifted violin."""
    policies = list(pd.unique(samples["policy"]))
    colours = [POLICY_COLOURS.get(p, "grey") for p in policies]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    panels = ((axes[0], judge, f"{judge} judge score"), (axes[1], "length", "response length (tokens)"))
    for ax, column, title in panels:
        datasets = [samples.loc[samples.policy == p, column].dropna().to_numpy(dtype=float) for p in policies]
        _violins(ax, datasets, colours)
        ax.set(title=f"{title} per policy (dot: mean)", xticks=range(len(policies)), xlim=(-0.6, len(policies) - 0.4))
        ax.set_xticklabels(policies)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
