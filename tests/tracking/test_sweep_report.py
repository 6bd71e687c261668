"""``alignops-report`` on a real MLflow store whose runs logged frontiers as the report stage logs
them: the newest sweep found by its commit and PPO settings, ``--last`` and ``--runs``, one
self-contained page; and ``make sweep`` as the commands it would run."""

from __future__ import annotations

import base64
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from alignops.evaluation.html_report import render_sweep
from alignops.sweep import main, sweep_runs
from alignops.tracking.frontiers import FRONTIER_ARTIFACT
from tests.helpers import REPO_ROOT, environment_without_mlflow_run

T0_MS = 1_796_620_000_000
"""A run's start time (ms since the epoch); each run below starts a minute after the one before."""
COMMIT, OLD_COMMIT = "943f197" + "0" * 33, "a1b2c3d" + "0" * 33
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def interval(value: float, half_width: float = 0.03) -> dict:
    return {"value": value, "ci_low": value - half_width, "ci_high": value + half_width}


def frontier(kl_coef: float, steps: int = 40, with_ppo_block: bool = True) -> dict:
    """A frontier.json (spec: issue 14): a smaller ``kl_coef`` lets PPO drift further per step,
    and past √KL ≈ 1.4 the judge falls while the proxy keeps rising (Gao et al.'s shape)."""

    def point(policy: str, kl: float, judge: float, step: int | None = None, n: int | None = None) -> dict:
        d = math.sqrt(kl)
        label = f"PPO step {step}" if policy == "ppo" else f"best-of-{n}" if n else "DPO"
        return {"policy": policy, "step": step, "n": n, "label": label, "kl": kl,
                "kl_kind": "bound" if n is not None else "estimate", "sqrt_kl": d,
                "judge": interval(0.3 + judge), "proxy": interval(0.1 + 0.5 * d), "mean_length": 40.0}

    kl_per_step = 0.004 / (kl_coef + 0.01)
    ppo = []
    for step in range(0, steps + 1, 10):
        d = math.sqrt(kl_per_step * step)
        ppo.append(point("ppo", d**2, d * (0.7 - 0.25 * d), step=step))
    best_of_n = [point("best_of_n", math.log(n) - (n - 1) / n, 0.1 * math.log2(n), n=n) for n in (1, 2, 4, 8, 16)]
    result = {"judge": "gold", "judge_description": "the embedded world's noise-free judge", "proxy": "rm",
              "interval": {"level": 0.95, "method": "paired percentile bootstrap over prompts", "resamples": 2000},
              "n_prompts": 24, "points": ppo + best_of_n + [point("dpo", 0.4, 0.25)]}
    if with_ppo_block:
        result["ppo"] = {"kl_coef": kl_coef, "steps": steps, "kl_controller": "fixed", "snapshot_every": 10}
    return result


def alarm(frontier: dict) -> dict:
    """overoptimisation.json for ``frontier``'s PPO curve: fired when the judge fell after its peak."""
    ppo = [p for p in frontier["points"] if p["policy"] == "ppo"]
    peak = max(ppo, key=lambda p: p["judge"]["value"])
    fired = peak is not ppo[-1]
    message = (f"over-optimisation: the gold judge's score peaked at PPO step {peak['step']} and fell"
               if fired else f"no over-optimisation: the gold judge's best checkpoint is the last, {ppo[-1]['step']}")
    return {"fired": fired, "judge": "gold", "peak_step": peak["step"], "last_step": ppo[-1]["step"],
            "offered_step": peak["step"] if fired else ppo[-1]["step"], "consecutive": 2, "message": message,
            "checkpoints": []}


def log_run(client: MlflowClient, experiment_id: str, minute: int, commit: str, frontier: dict | None,
            name: str = "report local 943f197", exp_name: str | None = None) -> str:
    """A finished run as the report stage leaves it: PPO parameters as kedro-mlflow flattens them,
    the lineage and alarm tags, frontier and alarm artifacts (none: another stage's run)."""
    run_id = client.create_run(experiment_id, start_time=T0_MS + 60_000 * minute, run_name=name).info.run_id
    client.set_tag(run_id, "git.commit", commit)
    if exp_name is not None:
        client.set_tag(run_id, "dvc.exp_name", exp_name)
    if frontier is not None:
        settings = frontier.get("ppo") or {"kl_coef": 0.2, "steps": 40, "kl_controller": "fixed"}
        for key in ("kl_coef", "steps", "kl_controller"):
            client.log_param(run_id, f"ppo.{key}", str(settings[key]))
        verdict = alarm(frontier)
        client.set_tag(run_id, "overoptimisation.alarm", "fired" if verdict["fired"] else "quiet")
        client.set_tag(run_id, "overoptimisation.peak_step", str(verdict["peak_step"]))
        client.log_dict(run_id, frontier, FRONTIER_ARTIFACT)
        client.log_dict(run_id, verdict, "reports/overoptimisation.json")
        client.log_dict(run_id, {"n_prompts": 24}, "reports/evaluation_summary.json")
    client.set_terminated(run_id)
    return run_id


@pytest.fixture
def runs(client: MlflowClient, tmp_path: Path) -> dict[str, str]:
    """An older run of another commit (no ``ppo`` block: from before it), then on this commit a
    run with other PPO settings, a kl_coef 0.05 run repeated later, and the sweep's three runs
    (each beside a stage run without a frontier, as under ``dvc exp run``): name -> run id."""
    experiment_id = client.create_experiment("alignops", artifact_location=(tmp_path / "mlruns").as_uri())
    ids = {
        "old": log_run(client, experiment_id, 0, OLD_COMMIT, frontier(0.2, with_ppo_block=False), "__default__ old"),
        "short": log_run(client, experiment_id, 1, COMMIT, frontier(0.05, steps=20)),
        "stale 0.05": log_run(client, experiment_id, 2, COMMIT, frontier(0.05)),
    }
    for minute, (kl_coef, exp_name) in enumerate([(0.1, "tidy-moth"), (0.02, "brisk-owl"), (0.05, "calm-yak")], 3):
        log_run(client, experiment_id, 2 * minute, COMMIT, None, "evaluation local 943f197", exp_name)
        ids[str(kl_coef)] = log_run(client, experiment_id, 2 * minute + 1, COMMIT, frontier(kl_coef), exp_name=exp_name)
    return ids


class PageParser(HTMLParser):
    """The page's images and its runs table's rows (the table after the "Runs" heading)."""

    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    return parser


def assert_one_inline_png(page: str) -> None:
    images = parse(page).images
    assert len(images) == 1
    source = images[0]["src"]
    assert source.startswith("data:image/png;base64,")
    assert base64.b64decode(source.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing off the page


def test_the_default_page_is_the_newest_sweep_in_kl_coef_order(runs, tracking_uri, tmp_path, capsys):
    output = tmp_path / "sweep.html"
    main(["--output", str(output)])
    page = output.read_text()
    assert_one_inline_png(page)
    rows = [row for row in parse(page).rows if row and row[0].startswith("kl_coef=")]
    assert [row[:5] for row in rows] == [
        ["kl_coef=0.02 · brisk-owl", "0.02", "40", "fired", "20"],
        ["kl_coef=0.05 · calm-yak", "0.05", "40", "fired", "30"],
        ["kl_coef=0.1 · tidy-moth", "0.1", "40", "quiet", "40"],
    ]
    last = frontier(0.02)["points"][4]  # PPO's step 40
    assert rows[0][5] == f"{last['judge']['value']:.2f} [{last['judge']['ci_low']:.2f}, {last['judge']['ci_high']:.2f}]"
    assert rows[0][6] == f"{last['sqrt_kl']:.3f}"
    assert "peaked at PPO step 20 and fell" in page and "the last, 40" in page  # each run's alarm message
    assert "git commit 943f197" in page
    printed = capsys.readouterr().out
    assert f"3 runs -> {output}" in printed and runs["0.05"] in printed and runs["stale 0.05"] not in printed


def test_last_and_runs_select(runs, client, tracking_uri, tmp_path):
    assert [info["run_id"] for _, _, info in sweep_runs(client, last=2)] == [runs["0.02"], runs["0.05"]]

    output = tmp_path / "chosen.html"
    main(["--runs", runs["old"], runs["short"], "--output", str(output)])
    page = output.read_text()
    assert_one_inline_png(page)
    labels = [row[0] for row in parse(page).rows if row and row[0].startswith("kl_coef=")]
    # the old run has no ppo block: its kl_coef is its logged parameter
    assert labels == ["kl_coef=0.05 · report local 943f197", "kl_coef=0.2 · __default__ old"]
    assert "kl_coef=0.1" not in page and "kl_coef=0.02" not in page

    without = log_run(client, client.get_experiment_by_name("alignops").experiment_id, 20, COMMIT, None)
    for unusable in (without, "0" * 32):  # a run without a frontier, a run id the store does not know
        with pytest.raises(SystemExit):
            main(["--runs", runs["old"], unusable, "--output", str(output)])


def test_the_console_script_writes_the_page_into_the_project(runs, tracking_uri, tmp_path):
    script = Path(sys.executable).parent / "alignops-report"
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "alignops"\n')
    env = {**environment_without_mlflow_run(), "MLFLOW_TRACKING_URI": tracking_uri}
    result = subprocess.run([str(script), "--last", "3"], cwd=project / "src", env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (project / "data" / "08_reporting" / "sweep_report.html").read_text()
    assert_one_inline_png(page)
    for kl_coef in ("0.02", "0.05", "0.1"):
        assert f"kl_coef={kl_coef} · " in page


def test_a_store_without_frontiers_is_an_error(client, tracking_uri, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "none.html")])
    assert "logged reports/frontier.json" in capsys.readouterr().err
    assert not (tmp_path / "none.html").exists()


def test_the_page_escapes_run_text_and_refuses_mixed_judges():
    run = frontier(0.05)
    info = {"run_id": "abc", "kl_coef": 0.05, "steps": 40, "alarm": "quiet", "peak_step": 40,
            "overoptimisation": None}
    page = render_sweep([("<b>mine</b>", run, info)])
    assert "&lt;b&gt;mine&lt;/b&gt;" in page and "<b>mine" not in page
    assert "no overoptimisation.json in this run (alarm tag: quiet)" in page
    with pytest.raises(ValueError, match="different judges"):
        render_sweep([("a", run, info), ("b", run | {"judge": "audit"}, info)])


def test_make_sweep_queues_one_experiment_per_value_then_reports_them():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "sweep", "KL_COEFS=0 0.1"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if "dvc " in line or "alignops-report" in line]
    path = f'PATH="{REPO_ROOT}/.venv/bin:$PATH"'
    assert commands == [
        f"{path} .venv/bin/dvc exp run --queue -S 'conf/base/parameters_ppo.yml:ppo.kl_coef=0,0.1'",
        f"{path} .venv/bin/dvc exp run --run-all",
        f"{path} .venv/bin/alignops-report --last 2",
    ]
