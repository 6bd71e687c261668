"""Shared fixtures: offline environment, the real HH-RLHF file, and throwaway Kedro projects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The network is closed: nothing may phone home or reach a hub while tests run.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# pytest -n 2 runs one worker per core; torch's own threads on top of that make the
# workers spin against each other (several times slower on a busy 2-core machine).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
HH_RLHF_FILE = REPO_ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.part1.jsonl.gz"
DATA_LAYERS = (
    "01_raw",
    "02_intermediate",
    "03_primary",
    "04_feature",
    "05_model_input",
    "06_models",
    "07_model_output",
    "08_reporting",
)


@pytest.fixture(scope="session")
def hh_rlhf_file() -> Path:
    """The real HH-RLHF sample that sits beside the repository in ``../shared``."""
    if not HH_RLHF_FILE.exists():
        pytest.fail(f"expected the shared HH-RLHF sample at {HH_RLHF_FILE}")
    return HH_RLHF_FILE


def make_project_copy(destination: Path) -> Path:
    """A runnable copy of this Kedro project (config + metadata, empty data layers).

    Pipelines then write into ``destination/data`` instead of the working tree, so
    tests never clobber a developer's outputs and can run in parallel.
    """
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "conf", destination / "conf", dirs_exist_ok=True)
    (destination / "conf" / "local").mkdir(exist_ok=True)
    shutil.copy2(REPO_ROOT / "pyproject.toml", destination / "pyproject.toml")
    # The package is installed (editable); Kedro only checks that the source dir exists.
    (destination / "src").mkdir(exist_ok=True)
    for layer in DATA_LAYERS:
        (destination / "data" / layer).mkdir(parents=True, exist_ok=True)
    return destination


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    return make_project_copy(tmp_path / "project")


def run_kedro(
    project_path: Path,
    env: str = "test",
    pipeline_names: list[str] | None = None,
    runtime_params: dict | None = None,
    **run_kwargs,
) -> dict:
    """Run pipelines in-process with a real ``KedroSession`` rooted at ``project_path``."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    # No chdir: the tracking hook anchors conf/base/mlflow.yml's sqlite:///mlflow.db at
    # project_path, so the run is tracked inside the copy wherever pytest runs from.
    with KedroSession.create(
        project_path=project_path, env=env, runtime_params=runtime_params or {}
    ) as session:
        return session.run(pipeline_names=pipeline_names, **run_kwargs)


KEDRO = Path(sys.executable).parent / "kedro"


def kedro_cli(project: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``kedro <args>`` in ``project``, as a user types it (offline, one torch thread)."""
    return subprocess.run(
        [str(KEDRO), *args],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
             "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tracked_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project (in a git repository) after two tracked ``kedro run`` of the test env.

    The first runs the whole DAG with ParallelRunner; the second registers the SFT
    policy (``registry.policy=sft``), which the gate must hold back. Each run's
    ``registry_decision.json`` is kept in ``decisions/``.

    Built once per test session and shared by the pytest-xdist workers (under a file
    lock in the session's common temp folder): whichever worker asks first builds it.
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    project = shared / "tracked_project"
    with FileLock(str(shared / "tracked_project.lock")):
        # built in place (MLflow stores absolute artifact paths, so no build-then-rename);
        # a build that failed in another worker left no marker and is redone
        if not (project / ".built").exists():
            shutil.rmtree(project, ignore_errors=True)
            _build_tracked_project(project)
            (project / ".built").touch()
    return project


def _build_tracked_project(folder: Path) -> Path:
    project = make_project_copy(folder)
    for args in (["init", "-q"], ["add", "conf", "pyproject.toml"],
                 ["-c", "user.name=alignops", "-c", "user.email=ci@example.com", "commit", "-qm", "project"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    decisions = project / "decisions"
    decisions.mkdir()
    for number, extra in enumerate([["--runner", "ParallelRunner"], ["--params", "registry.policy=sft"]], 1):
        result = kedro_cli(project, "run", "--env", "test", *extra)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        shutil.copy2(project / "data" / "08_reporting" / "registry_decision.json", decisions / f"{number}.json")
    return project
