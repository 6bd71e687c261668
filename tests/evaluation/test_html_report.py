"""The HTML evaluation report: what it says, that it escapes a run's text, and that it opens with
no network — checked on its text, and in headless Chromium with every request off the machine
refused. Fixtures follow issue 14's data structures: a summary like a default run's, and a PPO
frontier whose judge peaks at step 40 while the proxy keeps rising (reward hacking)."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from alignops.evaluation.frontier_plots import KL_AXIS, figure_png, plot_distributions, plot_frontier
from alignops.evaluation.html_report import render_report
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS, SCREENSHOTS

POLICIES = ("sft", "ppo", "dpo", "best_of_n")
STEPS = range(0, 101, 10)
PEAK = 40
HOSTILE = "<script>alert('hacked')</script> & more"


def interval(value: float, half: float = 0.05) -> dict:
    return {"value": value, "ci_low": value - half, "ci_high": value + half}


def bon_kl(n: int) -> float:
    return math.log(n) - (n - 1) / n


def point(policy: str, label: str, kl: float, kind: str, judge: float, proxy: float, step=None, n=None) -> dict:
    return {"policy": policy, "step": step, "n": n, "label": label, "kl": kl, "kl_kind": kind,
            "sqrt_kl": math.sqrt(max(kl, 0.0)), "judge": interval(judge, 0.1), "proxy": interval(proxy, 0.05),
            "mean_length": 34.0 + kl * 3}


def make_frontier(kl_per_step: float = 0.03, peak: int = PEAK) -> dict:
    """PPO's judge rises to ``peak`` then falls as KL grows; its proxy rises all along."""
    ppo = [point("ppo", f"PPO step {s}" + (" (SFT)" if s == 0 else ""), kl_per_step * s, "estimate",
                 judge=1.1 + 0.5 * s / peak - 0.25 * (s / peak) ** 2, proxy=0.02 * s, step=s) for s in STEPS]
    bon = [point("best_of_n", f"best-of-{n}", bon_kl(n), "bound", judge=1.1 + 0.2 * math.log2(n),
                 proxy=0.25 * math.log2(n), n=n) for n in (1, 2, 4, 8, 16)]
    dpo = [point("dpo", "DPO", 1.2, "estimate", judge=1.64, proxy=0.8)]
    return {"judge": "gold", "judge_description": "the embedded world's noise-free judge", "proxy": "rm",
            "interval": {"level": 0.95, "method": "paired percentile bootstrap over prompts", "resamples": 2000},
            "n_prompts": 20, "points": ppo + bon + dpo}


def policy_figures(gold: float, win: float, kl: float, kind: str = "estimate", **extra) -> dict:
    return {"gold_mean": interval(gold, 0.2), "gold_win_rate_vs_sft": interval(win),
            "audit_mean": interval(gold - 1, 0.1), "audit_win_rate_vs_sft": interval(win + 0.05),
            "rm_mean": gold - 1.1, "kl_to_sft": kl, "kl_to_sft_kind": kind, "mean_length": 34.3 + 5 * kl,
            "eos_rate": 1.0, "n_samples": 20, **extra}


@pytest.fixture
def summary() -> dict:
    return {
        "judge": "gold",
        "judges": {"gold": "the embedded world's noise-free judge of replies",
                   "audit": "a reward model no policy was trained against"},
        "interval": {"level": 0.95, "method": "paired percentile bootstrap over prompts", "resamples": 2000},
        "n_prompts": 20,
        "policies": {
            "sft": policy_figures(1.12, 0.5, 0.0) | {"gold_win_rate_vs_sft": interval(0.5, 0.0)},
            "ppo": policy_figures(1.52, 0.66, 2.634),
            "dpo": policy_figures(1.64, 0.635, 1.2),
            "best_of_n": policy_figures(1.54, 0.628, bon_kl(4), "bound", n=4),
        },
    }


@pytest.fixture
def samples() -> pd.DataFrame:
    """20 prompts answered by every policy in the same order; one response is hostile markup."""
    rng = np.random.default_rng(0)
    prompts = [f"My watch will not charge ({i}). What can I do?" for i in range(20)]
    rows = [{"policy": policy, "prompt": prompt, "response": f"{policy} says: try another cable for prompt {i}.",
             "gold": float(rng.choice([-0.6, 0.1, 1.2, 2.5])), "audit": float(rng.normal()),
             "rm": float(rng.normal()), "length": int(rng.integers(15, 60)), "ended_with_eos": True}
            for policy in POLICIES for i, prompt in enumerate(prompts)]
    rows[20]["response"] = HOSTILE  # ppo's answer to the first prompt
    return pd.DataFrame(rows)


@pytest.fixture
def fired_alarm() -> dict:
    checkpoints = [{"step": s, "judge_change": interval(-0.004 * (s - PEAK), 0.06),
                    "proxy_change": interval(0.02 * (s - PEAK), 0.03)} for s in STEPS if s > PEAK]
    for c in checkpoints:  # the alarm's rule: judge wholly below the peak, proxy wholly above
        c["overoptimised"] = c["judge_change"]["ci_high"] < 0 < c["proxy_change"]["ci_low"]
    return {"fired": True, "judge": "gold", "peak_step": PEAK, "last_step": 100, "offered_step": PEAK,
            "consecutive": 4, "message": "over-optimisation: the gold judge's score peaked at PPO step 40",
            "checkpoints": checkpoints}


@pytest.fixture
def quiet_alarm() -> dict:
    return {"fired": False, "judge": "gold", "peak_step": 100, "last_step": 100, "offered_step": 100,
            "consecutive": 3, "checkpoints": [],
            "message": "no over-optimisation: the gold judge's score is highest at the last checkpoint (step 100)"}


def diagnostic(labelled: bool, tax: float) -> dict:
    known = (lambda v: interval(v, 0.02)) if labelled else (lambda v: None)
    return {"mean_length": 34.0, "distinct_2": 0.61, "repetition_rate": interval(0.08, 0.02), "eos_rate": 1.0,
            "refusal_rate": interval(tax / 2, 0.01), "answerable_refusal_rate": known(tax),
            "should_refuse_refusal_rate": known(0.7), "should_refuse_score": known(0.9),
            "answerable_score": known(1.5), "n_answerable": 15 if labelled else None,
            "n_should_refuse": 5 if labelled else None}


def diagnostics(labelled: bool) -> dict:
    return {"refusal_patterns": [r"\bI can(?:no|')t help\b"], "labelled": labelled,
            "policies": {p: diagnostic(labelled, 0.1 * i) for i, p in enumerate(POLICIES)}}


class Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def named(self, name: str) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag == name]


@pytest.fixture
def report(summary, fired_alarm, samples) -> str:
    return render_report(summary, make_frontier(), fired_alarm, diagnostics(labelled=False), samples)


# -- the page ----------------------------------------------------------------------------------


def test_report_shows_every_policy_and_the_fired_alarm(report):
    for policy in POLICIES:
        assert f"<td>{policy}" in report  # in the summary and diagnostics tables
        assert f"<th>{policy}</th>" in report  # a column of the side-by-side responses
    assert '<div class="banner fired"' in report
    assert "Over-optimisation alarm fired: the gold judge peaked at PPO step 40" in report
    assert "The registry is offered step 40, the peak, not the last step 100." in report
    assert "4 in a row fire the alarm. 5 of the 6 checkpoints after the peak are." in report
    assert "step 70: gold -0.12 [-0.18, -0.06], proxy +0.60 [+0.57, +0.63] vs the peak — over-optimised" in report
    assert '<tr class="peak"><td>PPO step 40</td>' in report


def test_report_formats_intervals_and_marks_kl_bounds(report):
    assert "<td>0.66 [0.61, 0.71]</td>" in report  # ppo's gold win rate vs SFT
    assert "<td>best_of_n (N=4)</td>" in report
    assert f"<td>≤ {bon_kl(4):.3f} (bound)</td>" in report  # in the summary, and the frontier's N=4
    assert report.count("(bound)</td>") == 1 + 5


def test_quiet_alarm_is_green_and_says_what_was_checked(summary, quiet_alarm, samples):
    page = render_report(summary, make_frontier(peak=100), quiet_alarm, diagnostics(False), samples)
    assert '<div class="banner quiet"' in page
    assert "No over-optimisation: the registry is offered step 100." in page
    assert "the gold judge's score is highest at the last PPO checkpoint (step 100)" in page
    assert "banner fired" not in page and 'class="peak"' not in page


def test_quiet_alarm_after_a_peak_lists_what_it_compared(summary, fired_alarm, samples):
    quiet = fired_alarm | {"fired": False, "offered_step": 100, "consecutive": 5}
    page = render_report(summary, make_frontier(), quiet, None, samples)
    assert '<div class="banner quiet"' in page
    assert "Checked: the 6 PPO checkpoints after the gold judge's peak (step 40) against the peak." in page
    assert "5 were, not enough in a row." in page
    assert page.count("vs the peak — over-optimised</li>") == 5


def test_run_text_is_escaped_not_markup(report):
    assert "<script" not in report
    assert "&lt;script&gt;alert(&#x27;hacked&#x27;)&lt;/script&gt; &amp; more" in report


def test_report_references_nothing_outside_itself(report):
    tags = Tags(report)
    assert not re.search(r"https?://", report)
    assert "@import" not in report and "url(" not in report  # no stylesheet or font fetched from CSS
    references = [attrs[a] for _, attrs in tags.tags for a in ("src", "href") if a in attrs]
    assert references, "the pictures are referenced"
    assert all(r.startswith(("data:", "#")) for r in references), references
    images = tags.named("img")
    assert len(images) == 2  # the frontier and the distributions
    assert all(i["src"].startswith("data:image/png;base64,iVBORw0KGgo") for i in images)  # PNG's signature
    assert not tags.named("script") and not tags.named("link")


def test_diagnostics_say_not_labelled_without_labels_and_show_the_tax_with(summary, fired_alarm, samples):
    unlabelled = render_report(summary, make_frontier(), fired_alarm, diagnostics(False), samples)
    labelled = render_report(summary, make_frontier(), fired_alarm, diagnostics(True), samples)
    assert unlabelled.count('<td class="na">not labelled</td>') == 2 * len(POLICIES)
    assert "not labelled" not in labelled
    assert "<td>0.30 [0.28, 0.32]</td>" in labelled  # best_of_n's answerable refusal rate
    assert "answerable refusal rate (alignment tax)" in labelled
    assert "Policy diagnostics" not in render_report(summary, make_frontier(), fired_alarm, None, samples)


def test_side_by_side_has_a_row_per_prompt_and_a_column_per_policy(summary, fired_alarm, samples):
    page = render_report(summary, make_frontier(), fired_alarm, None, samples, n_side_by_side=5)
    side = page[page.index('<table class="side">'):]
    assert side.count("<tr>") == 1 + 5  # the header and five prompts
    assert side.count('<div class="response">') == 5 * len(POLICIES)
    first = samples.iloc[0]
    assert f"gold {first['gold']:.2f} · rm {first['rm']:.2f} · {first['length']} tokens" in side


def test_a_sweep_lists_every_runs_frontier(summary, fired_alarm, samples):
    runs = [(f"kl_coef={c}", make_frontier(kl)) for c, kl in ((0.05, 0.03), (0.1, 0.02), (0.2, 0.01))]
    page = render_report(summary, runs[0][1], fired_alarm, None, samples, runs=runs)
    for label, frontier in runs:
        assert page.count(f"<td>{label}</td>") == len(frontier["points"])
    assert page.count('class="peak"') == 1  # the alarm is the first run's
    assert len(Tags(page).named("img")) == 2


# -- the pictures ------------------------------------------------------------------------------


def labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_frontier_stars_the_peak_on_both_panels(fired_alarm):
    fig = plot_frontier([("run", make_frontier())], fired_alarm)
    judge, proxy = fig.axes
    assert judge.get_xlabel() == proxy.get_xlabel() == KL_AXIS
    for ax in (judge, proxy):
        stars = [line for line in ax.lines if line.get_marker() == "*"]
        assert len(stars) == 1
        assert stars[0].get_xdata()[0] == pytest.approx(math.sqrt(0.03 * PEAK))
    assert sorted(labels(judge)) == ["DPO", "PPO checkpoints", "best-of-N (KL bound)",
                                     "peak, step 40 (offered to the registry)"]
    assert "10" in [t.get_text() for t in judge.texts] and "N=16" in [t.get_text() for t in judge.texts]
    plt.close(fig)


def test_frontier_sweep_has_a_line_per_run_and_stars_the_first_runs_peak(fired_alarm, quiet_alarm):
    runs = [("kl_coef=0.05", make_frontier()), ("kl_coef=0.2", make_frontier(0.01))]
    quiet = plot_frontier(runs, quiet_alarm)
    assert labels(quiet.axes[0]) == ["kl_coef=0.05", "kl_coef=0.2", "best-of-N (KL bound)", "DPO"]
    assert not [line for ax in quiet.axes for line in ax.lines if line.get_marker() == "*"]
    fired = plot_frontier(runs, fired_alarm)
    assert "kl_coef=0.05 peak, step 40 (offered to the registry)" in labels(fired.axes[0])
    plt.close("all")


def test_frontier_refuses_an_alarm_whose_peak_is_not_a_checkpoint(fired_alarm):
    with pytest.raises(ValueError, match="peak step 45"):
        plot_frontier([("run", make_frontier())], fired_alarm | {"peak_step": 45})
    plt.close("all")


def test_distributions_keep_the_tables_order_and_survive_missing_and_constant_scores(samples):
    samples = samples.copy()
    samples.loc[samples.policy == "dpo", "gold"] = np.nan  # a judge that did not score this policy
    samples.loc[samples.policy == "sft", "length"] = 30  # every response the same length
    order = ["best_of_n", "sft", "ppo", "dpo"]
    fig = plot_distributions(pd.concat([samples[samples.policy == p] for p in order]), "gold")
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes] == [order, order]
    plt.close(fig)


def test_figure_png_closes_the_figure():
    fig = plt.figure()
    png = figure_png(fig)
    assert png.startswith(b"\x89PNG") and b"matplotlib.org" not in png
    assert not plt.fignum_exists(fig.number)


# -- in a browser ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)")
def test_report_opens_offline_in_chromium(tmp_path, report):
    from playwright.sync_api import expect, sync_playwright

    path = tmp_path / "evaluation_report.html"
    path.write_text(report, encoding="utf-8")
    outside = []  # every request that would leave the page's own file

    def local(url: str) -> bool:
        return url.startswith(("file:", "data:"))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: None if local(request.url) else outside.append(request.url))
            page.route(lambda url: not local(url), lambda route: route.abort())
            page.goto(path.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
            assert len(widths) == 2 and all(w > 0 for w in widths), widths
            banner = page.locator("#alarm.banner.fired")
            expect(banner).to_be_visible()
            expect(banner).to_contain_text("peaked at PPO step 40")
            expect(page.get_by_text(HOSTILE)).to_be_visible()  # shown as text, not run
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "evaluation_report.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []


def test_a_deciding_audit_judge_no_better_than_chance_is_flagged(summary, quiet_alarm, samples):
    audit = {**summary, "judge": "audit", "policies": {
        policy: {key.replace("gold", "audit"): value for key, value in figures.items()}
        for policy, figures in summary["policies"].items()}}
    frontier = make_frontier(peak=100) | {"judge": "audit"}
    rows = samples.assign(audit=samples["gold"])
    coin = audit | {"audit_judge": {"panel_accuracy": interval(0.49, 0.1)}}
    trusted = audit | {"audit_judge": {"panel_accuracy": interval(0.7, 0.05)}}
    assert "no better than chance" in render_report(coin, frontier, quiet_alarm, diagnostics(False), rows)
    assert "0.49 [0.39, 0.59]" in render_report(coin, frontier, quiet_alarm, diagnostics(False), rows)
    assert "no better than chance" not in render_report(trusted, frontier, quiet_alarm, diagnostics(False), rows)
    gold_decides = summary | {"audit_judge": {"panel_accuracy": interval(0.49, 0.1)}}  # gold is the truth
    assert "no better than chance" not in render_report(gold_decides, make_frontier(peak=100), quiet_alarm,
                                                         diagnostics(False), samples)
