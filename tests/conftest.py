"""Shared fixtures: offline environment, one torch thread, the tiny Llama, the real HH-RLHF file,
throwaway Kedro projects, and the two expensive things built once per test session: the
upstream stages' data (``upstream_data``) and the tracked project (``tracked_project``)."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# The network is closed: nothing may phone home or reach a hub while tests run.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# pytest -n 2 runs one worker per core; OpenMP threads on top of that make the workers spin
# against each other (several times slower on a busy 2-core machine). Set before torch loads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from filelock import FileLock

from alignops import warm
from tests import processes
from tests.helpers import (
    REPO_ROOT,
    TRACKED_FIRST_RUN_DATA,
    TRACKED_OVERRIDE_REASON,
    environment_without_mlflow_run,
    kedro_cli,
    make_project_copy,
    make_tiny_policy,
    make_tiny_tokenizer,
    run_kedro,
)

ALIGNOPS_PROMOTE = Path(sys.executable).parent / "alignops-promote"
HH_RLHF_FILE = REPO_ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.part1.jsonl.gz"
UPSTREAM = {
    "data_validation": ("data_generation", "ingestion", "data_validation"),
    "sft": ("sft",),
    "reward": ("reward",),
}
"""What a ``test`` env run does before PPO, in order: each key names the data/ snapshot
``upstream_data`` keeps after it, each value the pipelines that lead there from the one before."""


# --- no process outlives the session ------------------------------------------------------------------

LEFTOVER_GRACE_S = 10
"""How long the processes still alive when the last test is torn down have to exit on their own
(a server that is finishing a request, a browser's helpers) before they count as left behind."""


def _runs_tests(config: pytest.Config) -> bool:
    """A pytest-xdist worker, or a session without workers; not the xdist controller."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER")) or not getattr(config.option, "numprocesses", None)


def pytest_configure(config: pytest.Config) -> None:
    """Every process that runs tests adopts the orphans of what its tests start
    (``tests.processes``): a process that outlived its parent is then still found below it."""
    if _runs_tests(config):
        processes.adopt_orphans()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After this process's last test, every fixture torn down (session-scoped servers and
    builds included), no process it started, or that one of those started, may be alive: the
    leftovers are named in an error on that test, then killed. Each pytest-xdist worker checks
    its own; the controller runs no test and starts no process but the workers and the tracked
    project's early build, which it waits for (``pytest_sessionfinish``)."""
    try:
        return (yield)
    finally:
        if nextitem is None and _runs_tests(item.config):
            left = processes.wait_until_gone(processes.descendants(), LEFTOVER_GRACE_S)
            described = processes.describe(left)
            processes.kill(left)
            processes.reap_zombies()
            if left:
                pytest.fail(f"{len(left)} process(es) outlived the tests that started them:\n{described}",
                            pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and two pytest-xdist workers with two
    threads each on a 2-core machine stall on OpenMP barriers (seconds per step, not ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def warm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``alignops-run`` (every DVC stage's command) starts warm servers: this session's live in a
    folder of their own and are stopped when it ends, not left to idle out after it."""
    folder = tmp_path_factory.mktemp("warm")
    os.environ["ALIGNOPS_WARM_DIR"] = str(folder)
    yield folder
    warm.stop_servers(folder)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny Llama's BPE (``tests.helpers.make_tiny_tokenizer``); a module that trains on its
    own words overrides this fixture."""
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def sft_model(tokenizer):
    """A randomly initialised ``TINY_LLAMA`` standing in for the SFT model. Shared by a module's
    tests, so a test must leave it as it found it (the loops copy it; PPO's tests check that)."""
    return make_tiny_policy(tokenizer)


@pytest.fixture(scope="session")
def hh_rlhf_file() -> Path:
    """1,800 real HH-RLHF pairs beside the repository (``../shared``), where a developer's
    machine or CI has them; skipped elsewhere. A fresh clone's tests use the 405 pairs of
    ``examples/hh_rlhf`` instead (tests/test_run.py, tests/pipelines/test_ingestion.py)."""
    if not HH_RLHF_FILE.exists():
        pytest.skip(f"the larger HH-RLHF sample is not beside the repository ({HH_RLHF_FILE})")
    return HH_RLHF_FILE


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    return make_project_copy(tmp_path / "project")


def shared_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temp folder that every pytest-xdist worker sees (each worker's own is in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def upstream_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``upstream_data(stage)``: the data/ folder a ``test`` env run leaves after ``stage`` of
    ``UPSTREAM`` and every stage before it. Read only: ``project_after`` copies it.

    Each snapshot is built once per test session, on first use, from the one before it, under
    a file lock shared by the pytest-xdist workers (whichever asks first builds it). Copying
    a folder costs milliseconds; the stages cost seconds each time a test re-ran them.
    The parquet tables' ``source`` column names the file the snapshot's ingestion read.
    """
    folder = shared_temp(tmp_path_factory) / "upstream"
    folder.mkdir(exist_ok=True)
    lock = FileLock(str(folder / "build.lock"))  # re-entrant: a snapshot builds its predecessor inside it
    stages = list(UPSTREAM)

    def snapshot(stage: str) -> Path:
        project = folder / stage
        with lock:
            if not (project / ".built").exists():  # a build that failed left no marker and is redone
                shutil.rmtree(project, ignore_errors=True)
                make_project_copy(project)
                if stages.index(stage) > 0:
                    previous = snapshot(stages[stages.index(stage) - 1])
                    shutil.copytree(previous, project / "data", dirs_exist_ok=True)
                run_kedro(project, env="test", pipeline_names=list(UPSTREAM[stage]))
                (project / ".built").touch()
        return project / "data"

    return snapshot


@pytest.fixture
def project_after(project_copy: Path, upstream_data: Callable[[str], Path]) -> Callable[[str], Path]:
    """``project_after(stage)``: this test's own project copy, its data/ as a ``test`` env run
    leaves it after ``stage`` (see ``upstream_data``), ready for the next stage to run in it."""

    def after(stage: str) -> Path:
        shutil.copytree(upstream_data(stage), project_copy / "data", dirs_exist_ok=True)
        return project_copy

    return after


# --- the tracked project ------------------------------------------------------------------------------


def _runs_the_whole_suite(config: pytest.Config) -> bool:
    """No selection narrower than the suite's own test paths (no -k, -m or other paths)."""
    tests = {(config.rootpath / path).resolve() for path in config.getini("testpaths")}
    selected = {Path(arg.split("::")[0]).resolve() for arg in config.args}
    return not config.option.keyword and not config.option.markexpr and selected <= tests


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, the controlling process starts the tracked project's build before
    the workers even collect (~15 s each), when the whole suite runs: that build (two ``kedro
    run`` subprocesses) is the longest chain of the session, and the controller is otherwise idle.
    The workers then find it built, or wait on its file lock (``build_tracked_project_once``)."""
    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        return
    if not _runs_the_whole_suite(config):
        return
    shared = config._tmp_path_factory.getbasetemp()  # the workers' common folder (``shared_temp``)
    env = environment_without_mlflow_run()
    os.environ[_EARLY_BUILD_ENV] = "1"  # set before xdist starts the workers, which inherit it
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracked-project")
    config.stash[_EARLY_BUILD] = (pool, pool.submit(build_tracked_project_once, shared, env))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if (early := session.config.stash.get(_EARLY_BUILD, None)) is not None:
        pool, _ = early
        pool.shutdown(wait=True)  # never leave a half-built project (or its kedro run) behind;
        # a failed build left no marker: the first test that needs the project rebuilds it and fails


_EARLY_BUILD = pytest.StashKey[tuple[ThreadPoolExecutor, Future]]()
_EARLY_BUILD_ENV = "ALIGNOPS_TESTS_TRACKED_PROJECT_EARLY"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported by now (torch, transformers, Kedro, MLflow, Great Expectations: about
    a million objects) lives for the whole session; frozen out of garbage collection, it is not
    walked again by every full collection the tests' training steps trigger (the loops do the
    same for themselves, ``alignops.training.common.gc_frozen``)."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the tracked project run last (otherwise in their order), so its background build
    has the whole session to finish before a worker waits for it; not when the controller
    started the build before collection (``pytest_sessionstart``): then it is done by the time
    the workers reach them in their own order, and these heavy tests (servers, browsers, a fresh
    process) overlap the light ones instead of piling up at the end. The order is the same in
    every pytest-xdist worker, as the scheduler requires."""
    if os.environ.get(_EARLY_BUILD_ENV) != "1":
        items.sort(key=lambda item: "tracked_project" in getattr(item, "fixturenames", ()))
    # The two DVC reproductions (~3 minutes each, the longest tests by far) start first, one at
    # the head of each worker's share (worksteal deals the list out in contiguous halves), so
    # they overlap everything else instead of running side by side at the end.
    longest = [item for item in items
               if item.nodeid.startswith("tests/test_dvc.py") and item.get_closest_marker("slow")]
    if len(longest) == 2 and len(items) > 4:
        rest = [item for item in items if item not in longest]
        half = len(items) // 2
        items[:] = [longest[0], *rest[: half - 1], longest[1], *rest[half - 1 :]]


@pytest.fixture(autouse=True, scope="session")
def tracked_project_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                          ) -> Iterator[Future | None]:
    """Starts building the tracked project in a background thread as the session starts, when a
    selected test needs it: its two ``kedro run`` subprocesses (a minute or two) then overlap the
    quick tests instead of stalling the worker that first asks for it. ``None`` when no test needs it.
    """
    if not any("tracked_project" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    # The environment as the session starts: MLFLOW_* variables that a test sets (through
    # monkeypatch) while the build runs must not reach the runs.
    env = environment_without_mlflow_run()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracked-project") as pool:
        yield pool.submit(build_tracked_project_once, shared_temp(tmp_path_factory), env)
        # leaving the pool waits for the build: another worker may be waiting for it


@pytest.fixture(scope="session")
def tracked_project(tracked_project_build: Future | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project (in a git repository) after two tracked ``kedro run`` of the whole ``test`` DAG,
    with a person's override of the gate between them.

    The first runs from an empty data/ with ParallelRunner, and ``first_run_data/`` keeps the
    data/ it left. Its policy (v1) is held: on the test world's few evaluation prompts its
    interval against its own SFT policy does not clear the margin. A person reads that
    evidence and makes v1 the champion anyway, policy and reward model, with
    ``alignops-promote`` (``TRACKED_OVERRIDE_REASON``), as the README's "Overriding the gate"
    says. The second run (the default SequentialRunner) registers its SFT policy
    (``registry.policy=sft``, v2), which the gate judges head to head with champion v1 and
    holds. Each run's ``registry_decision.json`` is kept in ``decisions/``.

    Built once per test session and shared by the pytest-xdist workers (under a file lock in
    the session's common temp folder): whichever worker starts first builds it, in the background.
    """
    if tracked_project_build is None:  # asked for at run time, not by a collected test's signature
        return build_tracked_project_once(shared_temp(tmp_path_factory), dict(os.environ))
    return tracked_project_build.result()


def build_tracked_project_once(shared: Path, env: dict[str, str]) -> Path:
    project = shared / "tracked_project"
    with FileLock(str(shared / "tracked_project.lock")):
        # built in place (MLflow stores absolute artifact paths, so no build-then-rename);
        # a build that failed in another worker left no marker and is redone
        if not (project / ".built").exists():
            shutil.rmtree(project, ignore_errors=True)
            _build_tracked_project(project, env)
            (project / ".built").touch()
    return project


def _build_tracked_project(folder: Path, env: dict[str, str]) -> Path:
    project = make_project_copy(folder, tracking_store=False)  # its first run creates the store
    for args in (["init", "-q"], ["add", "conf", "pyproject.toml"],
                 ["-c", "user.name=alignops", "-c", "user.email=ci@example.com", "commit", "-qm", "project"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    decisions = project / "decisions"
    decisions.mkdir()
    # the second run is plain `kedro run` (SequentialRunner), the README's other way to run it all
    for number, extra in enumerate([["--runner", "ParallelRunner"], ["--params", "registry.policy=sft"]], 1):
        result = kedro_cli(project, "run", "--env", "test", *extra, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        shutil.copy2(project / "data" / "08_reporting" / "registry_decision.json", decisions / f"{number}.json")
        if number == 1:
            shutil.copytree(project / "data", project / TRACKED_FIRST_RUN_DATA)
            _override_the_gate(project, env)
    return project


def _override_the_gate(project: Path, env: dict[str, str]) -> None:
    """``alignops-promote 1 --reason ...`` for the policy, typed in the project as a person would
    (the store is found from the folder); its reward model (the one a PPO policy was trained
    against) follows it, as when the gate promotes."""
    result = subprocess.run(
        [str(ALIGNOPS_PROMOTE), "1", "--reason", TRACKED_OVERRIDE_REASON],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "alignops-reward-model: champion v- -> v1" in result.stdout, result.stdout
