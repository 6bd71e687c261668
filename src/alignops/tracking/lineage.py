"""Which DVC reproduction a ``kedro run`` belongs to, and the digests of what it read.

``dvc repro`` runs one ``kedro run --pipelines <stage>`` per stage, each a process of its
own. DVC tells a stage's command its name (``DVC_STAGE``), the repository (``DVC_ROOT``)
and, under ``dvc exp run``, the experiment (``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV``),
but not which reproduction it is part of. The DVC process that runs the stages is the
same for all of them, so it names the reproduction: its pid and start time, found by
walking up from this process past the shells DVC starts commands in.

The MLflow side (one parent run per reproduction, a nested run per stage) is in
``alignops.hooks``; this module needs neither MLflow nor Kedro.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish", "cmd.exe", "powershell.exe", "pwsh"})
REPRO_TAG = "dvc.repro"
"""Tag of the parent run that groups a reproduction's stage runs: the DVC process's identity."""
CALLER_PID = "ALIGNOPS_CALLER_PID"
"""A warm stage's caller (``alignops-run``), whose ancestors are the stage's: alignops.warm.CALLER_PID."""
DEP_TAG_PREFIX = "dvc.dep."
"""``dvc.dep.<path>``: the ``dvc.lock`` digest of a stage input (``md5``, ``<md5>.dir`` for a folder)."""


@dataclass(frozen=True)
class DvcRun:
    """A ``kedro run`` started by DVC as one stage of a reproduction."""

    stage: str
    root: Path
    repro: str | None
    """``<pid>-<start time in ms>`` of the DVC process; None when it cannot be found."""
    exp_name: str | None = None
    baseline_rev: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {"dvc.stage": self.stage}
        if self.exp_name:
            tags["dvc.exp_name"] = self.exp_name
        if self.baseline_rev:
            tags["dvc.exp_baseline_rev"] = self.baseline_rev
        return tags


def current(environ: Mapping[str, str] | None = None) -> DvcRun | None:
    """The DVC stage this process runs, or None outside ``dvc repro``/``dvc exp run``."""
    environ = os.environ if environ is None else environ
    stage = environ.get("DVC_STAGE")
    if not stage:
        return None
    return DvcRun(
        stage=stage,
        root=Path(environ.get("DVC_ROOT") or Path.cwd()),
        repro=_dvc_process_id(),
        exp_name=environ.get("DVC_EXP_NAME") or None,
        baseline_rev=environ.get("DVC_EXP_BASELINE_REV") or None,
    )


def _dvc_process_id() -> str | None:
    """The first ancestor of this process that is not a shell, if it is a DVC process. A stage
    forked by the warm server (``alignops-run``) counts the ``alignops-run`` it runs for as
    itself: that process's ancestors are DVC's."""
    try:
        caller = os.environ.get(CALLER_PID)
        process = (psutil.Process(int(caller)) if caller else psutil.Process()).parent()
        while process is not None and process.name() in SHELLS:
            process = process.parent()
        if process is None or not any("dvc" in part for part in process.cmdline()[:3]):
            return None
        return f"{process.pid}-{int(process.create_time() * 1000)}"
    except psutil.Error:
        return None


def _dvc_stages(project: Path) -> dict | None:
    """The ``stages`` of ``project/dvc.yaml``, or None without a readable one."""
    try:
        return yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def _lock_outs(lock: Mapping) -> dict[str, str]:
    """path -> digest of every stage output recorded in a ``dvc.lock``."""
    digests = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                digests[out["path"]] = out["md5"]
    return digests


def input_digests(project: Path, stage: str) -> dict[str, str]:
    """``dvc.dep.<path>`` -> digest for each data input of ``stage`` (of ``project/dvc.yaml``)
    that DVC has recorded: an output of an earlier stage (its ``dvc.lock`` entry, written
    when that stage finished, so current by the time this one starts) or a file added with
    ``dvc add`` (its ``.dvc`` file). Code and parameters are the git commit's."""
    stages = _dvc_stages(project)
    if not stages or stage not in stages:
        return {}
    deps = stages[stage].get("deps") or []
    lock_path = project / "dvc.lock"
    recorded = _lock_outs(yaml.safe_load(lock_path.read_text()) or {}) if lock_path.is_file() else {}
    digests = {}
    for dep in deps:
        path = str(dep)
        if path in recorded:
            digests[DEP_TAG_PREFIX + path] = recorded[path]
            continue
        pointer = project / f"{path}.dvc"
        if pointer.is_file():
            outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or []
            if outs and "md5" in outs[0]:
                digests[DEP_TAG_PREFIX + path] = outs[0]["md5"]
    return digests


def parameter_blocks(project: Path) -> set[str] | None:
    """The parameter blocks the stages of ``project/dvc.yaml`` read (None without the file):
    what a reproduction of the whole DAG depends on, known without importing its pipelines."""
    stages = _dvc_stages(project)
    if stages is None:
        return None
    blocks = set()
    for stage in stages.values():
        for entry in stage.get("params") or []:
            for keys in (entry.values() if isinstance(entry, dict) else [[entry]]):
                blocks.update(str(key).split(".", 1)[0] for key in keys)
    return blocks


def mlflow_root(project: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where a run's ``sqlite:///mlflow.db`` belongs: the project, or the repository's own
    folder when ``dvc exp run --queue`` runs the project in a copy under ``.dvc/tmp``
    (the copy is deleted afterwards, and its runs with it)."""
    environ = os.environ if environ is None else environ
    root = environ.get("DVC_ROOT")
    if root and (Path(root) / ".dvc") in project.resolve().parents:
        return Path(root)
    return project
