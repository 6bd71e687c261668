"""The MLflow UI and kedro-viz as a person sees them: real servers on loopback, headless Chromium.

Both servers are started the way the README says (``mlflow ui``, ``kedro viz run``): the
MLflow UI on the project that ``tracked_project`` ran twice; kedro-viz, which draws the
pipelines and the catalog and reads no data, on a fresh project copy (so it need not wait
for the tracked project's build). Screenshots go to
``$ALIGNOPS_TEST_ARTIFACTS/screenshots`` (default ``test-artifacts/screenshots``).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, CHROMIUM_FLAGS, KEDRO, SCREENSHOTS
from tests.processes import stop_process_group

MLFLOW = Path(sys.executable).parent / "mlflow"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    """A free loopback port below 49152 (kedro-viz refuses the ephemeral range)."""
    # SystemRandom: training seeds `random` identically in every xdist worker, so two workers
    # would otherwise try the same ports in the same order.
    for port in random.SystemRandom().sample(range(20_000, 40_000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 40000")


@contextmanager
def serve(command: list[str], cwd: Path, port: int, ready_path: str = "/", timeout: float = 180) -> Iterator[str]:
    """Start a server, wait until ``ready_path`` answers on 127.0.0.1:port, stop it afterwards."""
    log = open(cwd / f"server-{port}.log", "w")  # noqa: SIM115 (closed below)
    # a session of its own: the server's processes are stopped as one group (kedro-viz serves
    # from a process it spawns, which outlived `kedro viz run` when only that was stopped)
    process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true",
                                    "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {(cwd / f'server-{port}.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + ready_path, timeout=10) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command[0]} did not answer on {url} within {timeout}s")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(process)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1800, "height": 1100})
    page = context.new_page()
    # Nothing leaves the machine: a request off loopback (kedro-viz asks Google for a font)
    # is refused at once instead of hanging until the network times out.
    page.route(lambda url: not url.startswith("http://127.0.0.1"), lambda route: route.abort())
    yield page
    context.close()


def dismiss_announcements(page) -> None:
    """Close the announcement MLflow shows on a first visit (the new registry UI), if any."""
    dialog = page.get_by_role("dialog")
    try:
        dialog.first.wait_for(state="visible", timeout=5_000)
    except Exception:  # noqa: BLE001 (playwright's TimeoutError: nothing to dismiss)
        return
    page.keyboard.press("Escape")
    dialog.first.wait_for(state="hidden", timeout=10_000)


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


@pytest.fixture(scope="session")  # not module: xdist may interleave this module's tests with others
def mlflow_ui(tracked_project: Path) -> Iterator[str]:
    port = free_port()
    # one worker process: the default four take a minute to start on a busy 2-core machine
    command = [str(MLFLOW), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    with serve(command, tracked_project, port) as url:
        yield url


@pytest.fixture(scope="session")
def tracked_runs(tracked_project: Path) -> tuple[str, list[str]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tracked_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("alignops")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return experiment.experiment_id, [r.info.run_id for r in runs]


def test_mlflow_ui_lists_the_runs_and_charts_a_ppo_metric(page, mlflow_ui, tracked_runs):
    from playwright.sync_api import expect

    experiment_id, run_ids = tracked_runs
    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs", wait_until="load")
    # each run listed under its name, "<pipelines> <env> <commit>"
    runs_listed = page.get_by_role("link", name=re.compile(r"^__default__ test \w+$"))
    expect(runs_listed).to_have_count(len(run_ids), timeout=60_000)
    expect(page.get_by_text(f"{len(run_ids)} matching runs")).to_be_visible()
    screenshot(page, "mlflow_runs")

    page.locator(f"a[href*='{run_ids[0]}']").first.click()  # the first run: its policy is champion
    expect(page).to_have_url(f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_ids[0]}", timeout=30_000)
    expect(page.get_by_text("Parameters (")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("cell", name="sft.learning_rate")).to_be_visible()
    screenshot(page, "mlflow_run_overview")

    page.get_by_role("tab", name="Model metrics").click()
    # one per-step curve of each stage; PPO's KL is the one kept as a screenshot
    for metric in ("loss/sft", "loss/reward", "loss/dpo", "objective/kl"):
        page.get_by_placeholder("Search metric charts").fill(metric)
        # the legend: "<run name> (<metric>)", the run named "__default__ test <commit>"
        legend = re.compile(rf"^__default__ test \w+ \({re.escape(metric)}\)$")
        expect(page.get_by_text(legend).first).to_be_visible(timeout=60_000)
    expect(page.locator(".js-plotly-plot, .main-svg").first).to_be_visible()
    screenshot(page, "mlflow_ppo_kl_chart")

    page.get_by_role("tab", name="Artifacts").click()
    for folder in ("curves", "data_docs", "reports", "tables"):
        expect(page.get_by_text(folder, exact=True)).to_be_visible(timeout=30_000)
    page.get_by_text("curves", exact=True).click()
    page.get_by_text("ppo.png", exact=True).click()
    expect(page.get_by_text("curves/ppo.png", exact=True)).to_be_visible(timeout=30_000)  # the preview title
    expect(page.locator("img[src^='blob:']").first).to_be_visible(timeout=30_000)  # and the picture
    screenshot(page, "mlflow_artifacts_ppo_curves")

    # the report stage's page, previewed by the UI itself (an iframe of the artifact)
    page.get_by_text("reports", exact=True).click()
    page.get_by_text("report.html", exact=True).click()
    expect(page.get_by_text("reports/report.html", exact=True)).to_be_visible(timeout=30_000)
    report = page.frame_locator("iframe").first
    expect(report.get_by_role("heading", name="alignops evaluation report")).to_be_visible(timeout=30_000)
    expect(report.get_by_text("Deciding judge:")).to_be_visible()
    screenshot(page, "mlflow_artifacts_report")


def test_mlflow_registry_shows_the_policy_with_its_champion(page, mlflow_ui):
    from playwright.sync_api import expect

    page.goto(f"{mlflow_ui}/#/models", wait_until="load")
    expect(page.get_by_role("link", name="alignops-policy")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("link", name="alignops-reward-model")).to_be_visible()
    dismiss_announcements(page)
    screenshot(page, "mlflow_registered_models")

    page.get_by_role("link", name="alignops-policy").click()
    version_one = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 1", exact=True))
    version_two = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 2", exact=True))
    expect(version_one.get_by_text("@ champion")).to_be_visible(timeout=60_000)
    expect(version_two.get_by_text("@ candidate")).to_be_visible()
    expect(version_two.get_by_text("@ champion")).to_have_count(0)
    expect(version_two.get_by_text("promotion.decision")).to_be_visible()
    expect(version_two.get_by_text("promotion.compared_to")).to_be_visible()  # held against champion v1
    expect(version_one.get_by_text("promotion.override_reason")).to_be_visible()  # a person promoted it
    screenshot(page, "mlflow_policy_versions")


def test_kedro_viz_shows_every_pipeline_and_its_nodes(page, project_copy):
    from kedro.framework.project import configure_project, pipelines
    from playwright.sync_api import expect

    configure_project("alignops")
    expected = {name: sorted(n.name for n in pipeline.nodes) for name, pipeline in pipelines.items()}
    port = free_port()
    command = [str(KEDRO), "viz", "run", "--host", "127.0.0.1", "--port", str(port), "--no-browser"]
    # ready once the API the page draws from answers (the pipelines are built by then)
    with serve(command, project_copy, port, ready_path="/api/main") as url:
        # every pipeline as the server hands it to the page: its task nodes are Kedro's
        for name, nodes in expected.items():
            with urllib.request.urlopen(f"{url}/api/pipelines/{name}", timeout=30) as response:
                graph = json.load(response)
            assert sorted(n["name"] for n in graph["nodes"] if n["type"] == "task") == nodes, name
        # and drawn in the browser: the whole DAG, the data composition and the registry stage
        # (each page load parses the whole app again, so not every one of the twelve)
        for name in ("__default__", "data", "registry"):
            nodes = expected[name]
            page.goto(f"{url}/?pid={name}", wait_until="load")
            task_nodes = page.locator("g.pipeline-node--task")
            try:
                expect(task_nodes).to_have_count(len(nodes), timeout=90_000)
            except AssertionError:
                screenshot(page, f"kedro_viz_{name}_failed")
                raise
            shown = sorted(text.strip() for text in task_nodes.all_text_contents())
            assert shown == nodes, name
            if name == "__default__":
                # the catalog's layers, in data/'s order, each drawn as a band with its name
                with urllib.request.urlopen(f"{url}/api/main", timeout=30) as response:
                    layers = json.load(response)["layers"]
                assert layers == ["raw", "intermediate", "primary", "model_input", "models", "reporting"]
                expect(page.locator(".pipeline-layer")).to_have_count(len(layers), timeout=30_000)
                expect(page.locator(".pipeline-layer-name")).to_have_count(len(layers))
                expect(page.locator(".pipeline-layer-name").first).to_be_visible()
            if name in {"__default__", "registry"}:
                screenshot(page, f"kedro_viz_{name}")
