"""A run that could not write its outputs stops before its first node, naming the folder and the
cause, instead of failing when a stage saves its model after training (a real ``kedro run``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import kedro_cli, mount_tmpfs, unmount


@pytest.fixture
def read_only_models(project_after) -> Path:
    """A project ready for SFT whose data/06_models is read-only: a read-only filesystem
    mounted there (root, whom permissions do not stop, where mounting is allowed) or a folder
    without write permission."""
    project = project_after("data_validation")
    models = project / "data" / "06_models"
    if os.geteuid() == 0:
        if not mount_tmpfs(models, "ro,size=1m"):
            pytest.skip("running as root, whom permissions do not stop, and nothing can be mounted read-only")
        yield project
        unmount(models)
    else:
        models.chmod(0o555)
        yield project
        models.chmod(0o755)


def test_an_unwritable_models_folder_stops_the_run_before_training_and_names_it(read_only_models):
    result = kedro_cli(read_only_models, "run", "--pipelines", "sft", "--env", "test", timeout=300,
                       env={**os.environ, "COLUMNS": "300"})  # rich wraps log lines at the terminal's width
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "this run cannot write its outputs; nothing was run" in output
    assert f"sft_model ({read_only_models / 'data' / '06_models' / 'sft'})" in output
    assert "read-only file system" in output or "not writable by this user (permission denied)" in output
    assert "Running node: train_sft" not in output  # stopped before the first node
    client = MlflowClient(f"sqlite:///{read_only_models / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])  # no run opened
