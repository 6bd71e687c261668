"""Several machines: a stage launched over two "machines" on this host, the main one by the
``kedro run``, the other by ``python -m alignops.training.worker`` (a real process), meeting
through a shared hand-off folder and accelerate's rendezvous; CPU ranks on gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignops.catalog.models import HFModelDataset
from alignops.training.accelerate_config import HANDOFF_DIR_ENV, check_accelerate_config
from alignops.training.handoff import model_digest
from alignops.training.launch import launch_command
from alignops.training.worker import claim
from tests.helpers import REPO_ROOT, last_run, run_kedro, stage_history


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_machines(folder: Path) -> Path:
    """The shipped two_nodes.yaml, pointed at this host, one CPU rank per machine, fp32."""
    config = yaml.safe_load((REPO_ROOT / "conf" / "accelerate" / "two_nodes.yaml").read_text())
    config.update(main_process_ip="127.0.0.1", main_process_port=_free_port(), num_processes=2,
                  mixed_precision="no")
    path = folder / "two_machines.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_a_stage_spans_two_machines_through_a_worker_and_hands_back_one_model(project_after, tmp_path,
                                                                            monkeypatch):
    project = project_after("data_validation")
    shared = tmp_path / "shared"
    config = _two_machines(tmp_path)
    monkeypatch.setenv(HANDOFF_DIR_ENV, str(shared))
    worker = subprocess.Popen(
        [sys.executable, "-m", "alignops.training.worker", "--machine-rank", "1", "--once"],
        cwd=project, env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        run_kedro(project, env="test", pipeline_names=["sft"],
                  runtime_params={"sft": {"accelerate_config": str(config)}})
        output, _ = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert "worker (machine 1): joining alignops-launch-" in output and "--machine_rank 1" in output

    client, run = last_run(project)
    assert run.info.status == "FINISHED"
    assert run.data.tags["launch.sft.processes"] == "2 (accelerate launch, 2 machines)"
    model = HFModelDataset(filepath=str(project / "data" / "06_models" / "sft")).load()
    assert run.data.tags["launch.sft.model_sha256"] == model_digest(model)  # both machines' ranks agreed
    steps = [point.step for point in client.get_metric_history(run.info.run_id, "loss/sft")]
    assert steps and sorted(steps) == [row["step"] for row in stage_history(project, "sft") if "loss/sft" in row]
    assert not list(shared.iterdir())  # the hand-off folder is gone from the shared folder


def test_several_machines_need_a_shared_folder_and_each_machine_rank_joins_once(tmp_path, monkeypatch):
    config = _two_machines(tmp_path)
    monkeypatch.delenv(HANDOFF_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match=f"2 machines need a hand-off folder .* {HANDOFF_DIR_ENV}"):
        check_accelerate_config(config)
    monkeypatch.setenv(HANDOFF_DIR_ENV, str(tmp_path))
    check_accelerate_config(config)
    command = launch_command(tmp_path, 2, str(config), machine_rank=1)
    assert command[command.index("--machine_rank") + 1] == "1"

    folder = tmp_path / "alignops-launch-1-sft-x"
    folder.mkdir()
    assert not claim(folder, 1)  # no spec yet
    (folder / "launch.json").write_text('{"launch": {"machines": 2}}')
    assert claim(folder, 1) and not claim(folder, 1)  # a second worker for machine 1 stays out
    assert not claim(folder, 2)  # two machines: there is no machine 2
