"""The evaluation as one HTML page a person reads before a policy ships.

The page is self-contained — inline CSS, every picture a base64 PNG ``data:`` URI, no script,
no web font — so it opens the same from an MLflow artifact, a mail attachment or a laptop with
no network, and shows only what the run measured. Every text from a run (prompts, responses,
judge descriptions, the alarm's message) is escaped: a policy's response is data, never markup.
"""

from __future__ import annotations

import base64
import html

import pandas as pd
from matplotlib.figure import Figure

from alignops.evaluation.frontier_plots import figure_png, plot_distributions, plot_frontier

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1em 2em; color: #1b1b1b; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.why { color: #555; max-width: 70em; }
.banner { padding: 0.8em 1.2em; border-radius: 6px; margin: 1em 0; border: 2px solid; }
.banner.fired { background: #fde8e8; border-color: #c62828; color: #7f1010; }
.banner.quiet { background: #e6f4ea; border-color: #2e7d32; color: #174d1c; }
.banner.absent { background: #f1f1f1; border-color: #999; color: #333; }
.banner strong { font-size: 1.15em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
tr.peak td { background: #fff3cd; font-weight: 600; }
tr.fired td { background: #fde8e8; }
.na { color: #888; font-style: italic; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
table.side td, table.side th { text-align: left; width: 20em; }
.response { white-space: pre-wrap; } .score { color: #555; font-size: 0.85em; margin-top: 0.3em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""

MISSING = "—"
NOT_LABELLED = "not labelled"
"""A refusal figure that needs prompts labelled answerable or should-refuse, on unlabelled prompts."""


def _interval(figure: dict | None, signed: bool = False) -> str:
    """``"0.66 [0.61, 0.71]"``; a change is signed, so its direction reads at a glance."""
    if figure is None:
        return MISSING
    number = "{:+.2f}" if signed else "{:.2f}"
    value, low, high = (number.format(figure[k]) for k in ("value", "ci_low", "ci_high"))
    return f"{value} [{low}, {high}]"


def _kl(value: float, kind: str) -> str:
    """Best-of-N's KL is log N − (N−1)/N, an upper bound, not an estimate: marked as such."""
    return f"≤ {value:.3f} (bound)" if kind == "bound" else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """An HTML table of plain-text cells (escaped here), absent figures greyed; ``row_classes``
    styles whole rows."""
    def cell(text: str) -> str:
        absent = ' class="na"' if text in (MISSING, NOT_LABELLED) else ""
        return f"<td{absent}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    row_classes = row_classes or [""] * len(rows)
    body = "".join(
        f'<tr class="{c}">{"".join(cell(text) for text in row)}</tr>' for row, c in zip(rows, row_classes, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(fig: Figure, alt: str) -> str:
    encoded = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _section(title: str, why: str, body: str) -> str:
    return f'<section><h2>{html.escape(title)}</h2><p class="why">{html.escape(why)}</p>{body}</section>'


def _header(summary: dict, title: str) -> str:
    judge = summary["judge"]
    interval = summary["interval"]
    judges = "".join(
        f"<li><strong>{html.escape(name)}</strong>{' (decides)' if name == judge else ''}: "
        f"{html.escape(description)}</li>"
        for name, description in summary["judges"].items()
    )
    return (
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Deciding judge: <strong>{html.escape(judge)}</strong> — "
        f"{html.escape(summary['judges'][judge])}</p><ul>{judges}</ul>"
        f"<p>Every interval: {round(100 * interval['level'])}% {html.escape(interval['method'])} "
        f"({interval['resamples']} resamples, {summary['n_prompts']} prompts), shown as value [low, high].</p>"
        f"{_judge_doubt(summary)}"
    )


def _judge_doubt(summary: dict) -> str:
    """A warning when the deciding judge is the audit judge and its held-out pairwise accuracy
    cannot be told from chance: every figure it made, the alarm's included, is then noise."""
    accuracy = (summary.get("audit_judge") or {}).get("panel_accuracy")
    if summary["judge"] != "audit" or not isinstance(accuracy, dict) or accuracy["ci_low"] > 0.5:
        return ""
    return (
        '<div class="banner fired"><strong>The deciding judge is no better than chance.</strong> '
        f"The audit judge orders held-out preference pairs as the annotators did {_interval(accuracy)} of the "
        "time; an interval reaching 0.5 is a coin. Read every score, win rate and the alarm below as noise "
        "until the audit judge is better (more audit pairs, a better base model, or a trusted classifier).</div>"
    )


def _banner(alarm: dict | None) -> str:
    """The over-optimisation alarm's verdict, red when it fired and green when it did not, with
    the rule it applied and every checkpoint's changes, so a reader can check the verdict."""
    if alarm is None:
        return '<div class="banner absent"><strong>No over-optimisation check in this run.</strong></div>'
    judge, peak, last = html.escape(alarm["judge"]), alarm["peak_step"], alarm["last_step"]
    checkpoints = alarm["checkpoints"]
    flagged = sum(c["overoptimised"] for c in checkpoints)
    rule = (f"A checkpoint is over-optimised when its {judge} change against the peak lies wholly below 0 and "
            f"its proxy (training reward model) change wholly above 0; {alarm['consecutive']} in a row fire "
            f"the alarm.")
    if alarm["fired"]:
        kind = "fired"
        headline = (f"Over-optimisation alarm fired: the {judge} judge peaked at PPO step {peak} and fell while "
                    f"the proxy kept rising. The registry is offered step {alarm['offered_step']}, the peak, "
                    f"not the last step {last}.")
        detail = f"{rule} {flagged} of the {len(checkpoints)} checkpoints after the peak are."
    elif checkpoints:
        kind = "quiet"
        headline = f"No over-optimisation: the registry is offered step {alarm['offered_step']}."
        detail = (f"Checked: the {len(checkpoints)} PPO checkpoints after the {judge} judge's peak (step {peak}) "
                  f"against the peak. {rule} {flagged} were, not enough in a row.")
    else:
        kind = "quiet"
        headline = f"No over-optimisation: the registry is offered step {alarm['offered_step']}."
        detail = f"Checked: the {judge} judge's score is highest at the last PPO checkpoint (step {last})."
    changes = "".join(
        f"<li>step {c['step']}: {judge} {_interval(c['judge_change'], signed=True)}, "
        f"proxy {_interval(c['proxy_change'], signed=True)} vs the peak"
        f"{' — over-optimised' if c['overoptimised'] else ''}</li>"
        for c in checkpoints
    )
    return f'<div class="banner {kind}" id="alarm"><strong>{headline}</strong><p>{detail}</p><ul>{changes}</ul></div>'


def _summary_table(summary: dict) -> str:
    judge = summary["judge"]
    judges = [judge, *(j for j in summary["judges"] if j != judge)]  # the deciding judge first
    ensemble = any("rm_disagreement" in f for f in summary["policies"].values())
    header = ["policy", f"{judge} mean", *(f"{j} win rate vs SFT" for j in judges), "RM score",
              *(["RM members' spread"] if ensemble else []), "KL to SFT", "mean length", "EOS rate"]
    rows = []
    for policy, f in summary["policies"].items():
        name = f"{policy} (N={f['n']})" if f.get("n") else policy
        wins = [_interval(f.get(f"{j}_win_rate_vs_sft")) for j in judges]
        spread = [f"{f['rm_disagreement']:.2f}" if "rm_disagreement" in f else "–"] if ensemble else []
        rows.append([name, _interval(f[f"{judge}_mean"]), *wins, f"{f['rm_mean']:.2f}", *spread,
                     _kl(f["kl_to_sft"], f["kl_to_sft_kind"]), f"{f['mean_length']:.1f}", f"{f['eos_rate']:.2f}"])
    return _table(header, rows)


def _frontier_table(runs: list[tuple[str, dict]], alarm: dict | None) -> str:
    """Every frontier point of every run; the first run's peak row is highlighted when the alarm fired."""
    sweep = len(runs) > 1
    judge, proxy = runs[0][1]["judge"], runs[0][1]["proxy"]
    header = [*(["run"] if sweep else []), "point", "KL to SFT", "√KL", f"{judge} mean", f"proxy ({proxy}) mean",
              "mean length"]
    rows, classes = [], []
    for i, (label, frontier) in enumerate(runs):
        for p in frontier["points"]:
            rows.append([*([label] if sweep else []), p["label"], _kl(p["kl"], p["kl_kind"]), f"{p['sqrt_kl']:.3f}",
                         _interval(p["judge"]), _interval(p["proxy"]), f"{p['mean_length']:.1f}"])
            peak = alarm is not None and alarm["fired"] and p["policy"] == "ppo" and p["step"] == alarm["peak_step"]
            classes.append("peak" if i == 0 and peak else "")
    return _table(header, rows, classes)


def _diagnostics_table(diagnostics: dict) -> str:
    """Diagnostics per policy; the refusal figures that need labelled prompts say so when absent."""
    def labelled(figure: dict | None) -> str:
        return _interval(figure) if diagnostics["labelled"] and figure is not None else NOT_LABELLED

    header = ["policy", "distinct-2", "repetition rate", "EOS rate", "refusal rate",
              "answerable refusal rate (alignment tax)", "should-refuse score"]
    rows = [
        [policy, f"{d['distinct_2']:.3f}", _interval(d["repetition_rate"]), f"{d['eos_rate']:.2f}",
         _interval(d["refusal_rate"]), labelled(d.get("answerable_refusal_rate")),
         labelled(d.get("should_refuse_score"))]
        for policy, d in diagnostics["policies"].items()
    ]
    patterns = ", ".join(f"<code>{html.escape(p)}</code>" for p in diagnostics["refusal_patterns"])
    return _table(header, rows) + f'<p class="why">A refusal is a response matching one of: {patterns}.</p>'


def _side_by_side(samples: pd.DataFrame, judge: str, n: int) -> str:
    """The first ``n`` prompts, one row each, one column per policy: a response with its judge score."""
    policies = list(pd.unique(samples["policy"]))
    prompts = list(pd.unique(samples["prompt"]))[:n]
    first = samples.drop_duplicates(["policy", "prompt"]).set_index(["prompt", "policy"])
    head = "".join(f"<th>{html.escape(p)}</th>" for p in ["prompt", *policies])
    rows = []
    for prompt in prompts:
        cells = [f"<td>{html.escape(prompt)}</td>"]
        for policy in policies:
            if (prompt, policy) not in first.index:
                cells.append(f'<td class="na">{MISSING}</td>')
                continue
            row = first.loc[(prompt, policy)]
            cells.append(f'<td><div class="response">{html.escape(str(row["response"]))}</div>'
                         f'<div class="score">{html.escape(judge)} {row[judge]:.2f} · rm {row["rm"]:.2f} · '
                         f'{int(row["length"])} tokens</div></td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="side"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_report(
    summary: dict,
    frontier: dict,
    alarm: dict | None,
    diagnostics: dict | None,
    samples: pd.DataFrame,
    *,
    title: str = "alignops evaluation report",
    n_side_by_side: int = 12,
    runs: list[tuple[str, dict]] | None = None,
) -> str:
    """The whole page as a string. ``runs`` (label, frontier) overlays a sweep's frontiers in the
    plot and lists all their points; its first run must be this report's, the one ``alarm`` is about."""
    judge = summary["judge"]
    runs = runs or [("this run", frontier)]
    parts = [
        _header(summary, title),
        _banner(alarm),
        _section("Policies", "One row per policy; win rates count a tie as one half, so SFT against itself is "
                 "exactly 0.50.", _summary_table(summary)),
        _section("Reward against KL", "Reward hacking shows here: the proxy keeps rising with KL while the "
                 "deciding judge peaks and falls. Best-of-N's KL is an analytic upper bound.",
                 _image(plot_frontier(runs, alarm), "frontier: judge and proxy against √KL to SFT")),
        _section("Frontier points", "Each point of the plot above with its interval.", _frontier_table(runs, alarm)),
    ]
    if diagnostics is not None:
        parts.append(_section("Policy diagnostics", "Collapse and refusal: a policy that learnt to refuse "
                              "answerable prompts pays an alignment tax the mean score can hide.",
                              _diagnostics_table(diagnostics)))
    parts += [
        _section("Distributions", "What the means above average over.",
                 _image(plot_distributions(samples, judge), "score and length distributions per policy")),
        _section("Side by side", f"The first {n_side_by_side} prompts, each policy's (first) response, "
                 f"with its {judge} score.", _side_by_side(samples, judge, n_side_by_side)),
    ]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _sweep_header(runs: list[tuple[str, dict, dict]], title: str, source: str | None) -> str:
    first = runs[0][1]
    interval = first["interval"]
    origin = f"<p>Runs from {html.escape(source)}.</p>" if source else ""
    return (
        f"<h1>{html.escape(title)}</h1>{origin}"
        f"<p>{len(runs)} runs overlaid. Deciding judge: <strong>{html.escape(first['judge'])}</strong> — "
        f"{html.escape(first['judge_description'])}; proxy: the training reward model "
        f"(<code>{html.escape(first['proxy'])}</code>).</p>"
        f"<p>Every interval: {round(100 * interval['level'])}% {html.escape(interval['method'])} "
        f"({interval['resamples']} resamples, {first['n_prompts']} prompts), shown as value [low, high].</p>"
    )


def _alarm_state(info: dict) -> str | None:
    """``fired``/``quiet`` from the run's ``overoptimisation.json``, else from its tag."""
    alarm = info.get("overoptimisation")
    return ("fired" if alarm["fired"] else "quiet") if alarm is not None else info.get("alarm")


def _sweep_table(runs: list[tuple[str, dict, dict]]) -> str:
    """One row per run: its setting, the alarm, and where PPO ended (its last checkpoint)."""
    judge = runs[0][1]["judge"]
    header = ["run", "kl_coef", "PPO steps", "alarm", "peak step", f"PPO final {judge} score", "PPO final √KL"]
    rows, classes = [], []
    for label, frontier, info in runs:
        ppo = [p for p in frontier["points"] if p["policy"] == "ppo"]
        last = max(ppo, key=lambda p: p["step"]) if ppo else None
        alarm = info.get("overoptimisation")
        peak = alarm["peak_step"] if alarm is not None else info.get("peak_step")
        state = _alarm_state(info)
        rows.append([label, MISSING if info.get("kl_coef") is None else str(info["kl_coef"]),
                     MISSING if info.get("steps") is None else str(info["steps"]), state or MISSING,
                     MISSING if peak is None else str(peak), _interval(last["judge"] if last else None),
                     f"{last['sqrt_kl']:.3f}" if last else MISSING])
        classes.append("fired" if state == "fired" else "")
    return _table(header, rows, classes)


def _sweep_alarms(runs: list[tuple[str, dict, dict]]) -> str:
    """Each run's alarm message as a small banner, red where it fired."""
    banners = []
    for label, _, info in runs:
        alarm = info.get("overoptimisation")
        if alarm is not None:
            kind, message = _alarm_state(info), alarm["message"]
        else:
            kind, message = "absent", f"no overoptimisation.json in this run (alarm tag: {info.get('alarm') or 'none'})"
        banners.append(f'<div class="banner {kind}"><strong>{html.escape(label)}</strong>'
                       f"<p>{html.escape(message)}</p></div>")
    return "".join(banners)


def render_sweep(runs: list[tuple[str, dict, dict]], *, title: str = "alignops sweep report",
                 source: str | None = None) -> str:
    """A sweep's runs on one self-contained page: their frontiers overlaid, a row per run, and
    each run's alarm. ``runs`` is (label, frontier, info) in the order to show them, ``info``
    holding ``kl_coef`` and ``steps`` (None where unknown), ``overoptimisation`` (the run's
    ``overoptimisation.json``, or None) and, for runs without it, the alarm's tags ``alarm``
    (``fired``/``quiet``) and ``peak_step``. ``source`` says where the runs came from. The runs
    must share a deciding judge: scores of different judges on one axis compare nothing."""
    if not runs:
        raise ValueError("a sweep report needs at least one run")
    judges = {frontier["judge"] for _, frontier, _ in runs}
    if len(judges) > 1:
        raise ValueError(f"the runs were judged by different judges ({sorted(judges)}): their scores do not compare")
    parts = [
        _sweep_header(runs, title, source),
        _section("Reward against KL", "One colour per run. Reward hacking shows as a gap opening along a run: "
                 "the proxy keeps rising with KL while the deciding judge peaks and falls; a larger kl_coef "
                 "holds PPO closer to SFT. Best-of-N's KL is an analytic upper bound.",
                 _image(plot_frontier([(label, frontier) for label, frontier, _ in runs]),
                        "the runs' frontiers: judge and proxy against √KL to SFT")),
        _section("Runs", "Where each run's PPO ended, and whether its over-optimisation alarm fired (rows in red); "
                 "a fired alarm offers the registry the peak step, not the last.", _sweep_table(runs)),
        _section("Alarms", "Each run's over-optimisation verdict as the report stage wrote it.", _sweep_alarms(runs)),
    ]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
