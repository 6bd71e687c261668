"""Checkpoints every stage writes and resumes from, written so that a kill never costs more
than the steps since the last one.

A checkpoint is ``<directory>/step_<step>/``: accelerate's state (model safetensors,
optimizer, registered schedulers, each rank's RNG states, accelerate's micro-step),
``loop_state.safetensors`` (the loop's own tensors: sampler generators, PPO's prompt
order) and ``step.json`` (the step, the loop's plain state, the metric history so far and
the fingerprint of what the stage was asked to do). It is written into ``step_<step>.partial``
and renamed into place when complete, so a kill or a full disk during a save leaves the
previous checkpoint as it was; older ones are pruned only after the rename.

A stage resumes (``resume: auto``) from the newest complete checkpoint whose fingerprint
is its own: the same configuration (``NOT_FINGERPRINTED`` aside), the same data and the
same starting model. Checkpoints of another configuration are left alone until this run
writes its first, then removed with the other stale ones.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file

from alignops.models.io_errors import write_failure

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
PARTIAL_SUFFIX = ".partial"
STATE_FILE = "step.json"
TENSOR_FILE = "loop_state.safetensors"
SHARDED_STATES = ("FSDP", "DEEPSPEED")
"""Launches whose checkpoints hold each rank's shard: only the same kind continues them."""
RESUME_MODES = ("auto", "never")
"""``resume``'s keywords; any other value is the path of one checkpoint folder."""
CODE_PACKAGES = ("alignops.core", "alignops.models", "alignops.training")
"""The packages whose source decides what a stage computes: a fix there (a loss, a model, a
loop) makes an earlier run's checkpoints another run's. Tracking, the hooks and the
pipelines' wiring are not in it: changing them still resumes."""
LIBRARIES = ("torch", "transformers", "accelerate", "peft")
NOT_FINGERPRINTED = frozenset({"resume", "checkpoint_every", "keep_checkpoints"})
"""Config fields that say how a stage checkpoints, not what it computes: changing one
between a kill and the rerun still resumes."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the folder and the cause."""


def check_resume_setting(config: Any) -> None:
    """``config.resume`` is ``auto``, ``never`` or a checkpoint folder's path; ValueError otherwise."""
    if not isinstance(config.resume, str) or not config.resume:
        raise ValueError(f"resume must be 'auto', 'never' or a checkpoint folder, got {config.resume!r}")


@functools.cache
def code_digest() -> str:
    """sha256 of the ``CODE_PACKAGES``' source files and the ``LIBRARIES``' versions."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        folder = Path(importlib.import_module(package).__file__).parent
        for path in sorted(folder.rglob("*.py")):
            digest.update(f"{package}/{path.relative_to(folder).as_posix()}".encode())
            digest.update(path.read_bytes())
    for library in LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    return digest.hexdigest()


def fingerprint(config: Any, *inputs: Any) -> str:
    """sha256 of what a stage computes from: ``config``'s fields (``NOT_FINGERPRINTED``
    aside), ``inputs`` (tensors, dicts of tensors, models by their state dicts, dataclasses,
    data frames, JSON-able values such as prompt lists) and the code (``code_digest``).
    Equal fingerprints, equal results, so a checkpoint may be resumed."""
    digest = hashlib.sha256(code_digest().encode())
    names = [f.name for f in fields(config)] if dataclasses.is_dataclass(config) else sorted(vars(config))
    settings = {name: getattr(config, name) for name in names if name not in NOT_FINGERPRINTED}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for value in inputs:
        _update(digest, value)
    return digest.hexdigest()


def _update(digest: Any, value: Any) -> None:
    if torch.is_tensor(value):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, torch.nn.Module):
        for name, tensor in sorted(value.state_dict().items()):
            digest.update(name.encode())
            _update(digest, tensor)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _update(digest, dataclasses.asdict(value))
    elif type(value).__name__ == "DataFrame":  # pandas, without importing it here
        import pandas as pd

        _update(digest, torch.as_tensor(pd.util.hash_pandas_object(value, index=True).to_numpy().astype("int64")))
    elif isinstance(value, Mapping):
        for key in sorted(value):
            digest.update(str(key).encode())
            _update(digest, value[key])
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())


@dataclass(frozen=True)
class Resumed:
    """What a loop gets back from ``Checkpoints.resume``: the step it continues after and its state."""

    step: int
    state: dict[str, Any]
    """The ``state`` the loop passed to ``save``: plain values and tensors, as saved."""
    folder: Path


class Checkpoints:
    """One stage's checkpoints in ``directory`` (None: none are written or read), as its
    ``config`` asks: ``checkpoint_every``, ``keep_checkpoints``, ``resume``.

    The fingerprint of ``config`` and ``inputs`` (the stage's data, starting model, model
    and generation settings) is taken here, before training changes any of them, and only
    when checkpoints are written or looked for: hashing a large model costs seconds.
    """

    def __init__(self, accelerator: Accelerator, directory: str | Path | None, stage: str,
                 config: Any, *inputs: Any) -> None:
        self.accelerator = accelerator
        self.directory = Path(directory) if directory else None
        self.stage = stage
        self.every = config.checkpoint_every
        self.keep = config.keep_checkpoints
        self.setting = config.resume
        # snapshots (``alignops.training.snapshots``) carry the fingerprint too
        wanted = self.every > 0 or self.setting != "never" or getattr(config, "snapshot_every", 0) > 0
        active = self.directory is not None and wanted
        # how many processes and which precision: another launch would not continue this one
        launch = {"processes": accelerator.num_processes, "precision": str(accelerator.mixed_precision),
                  "device": accelerator.device.type}
        kind = getattr(accelerator.distributed_type, "value", accelerator.distributed_type)
        if kind in SHARDED_STATES:  # sharded checkpoints load back only so
            launch["distributed_type"] = kind
        self.fingerprint = fingerprint(config, launch, *inputs) if active else ""
        if self.directory is not None and self.every > 0:
            self._probe()

    def _probe(self) -> None:
        """Fail now, not at the first save hours later, when the folder cannot be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise CheckpointError(
                f"{self.stage}: cannot write checkpoints to {self.directory}: {write_failure(error, self.directory)}"
            ) from error

    def due(self, step: int, last: int) -> bool:
        """A checkpoint after step ``step`` of ``last``: every ``checkpoint_every`` steps and
        after the last (a rerun of a finished stage, as in a killed DAG run again, then costs a
        load, not the training)."""
        return self.directory is not None and self.every > 0 and (step % self.every == 0 or step == last)

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write checkpoint ``step`` with the loop's ``state`` (plain values and tensors), on every rank.

        Raises ``CheckpointError`` naming the folder and the cause (no space, no permission)
        after removing the partial folder; the previous checkpoint is untouched.
        """
        assert self.directory is not None
        accelerator = self.accelerator
        folder = self.directory / f"{CHECKPOINT_PREFIX}{step:08d}"
        partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
        tensors = {name: value.detach().cpu().contiguous() for name, value in state.items() if torch.is_tensor(value)}
        plain = {name: value for name, value in state.items() if not torch.is_tensor(value)}
        failure = torch.zeros(1, device=accelerator.device)
        error: Exception | None = None
        try:
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)  # a kill's leftover of this very step
                partial.mkdir(parents=True)
        except OSError as caught:
            error, failure[0] = caught, 1.0
        failure = accelerator.reduce(failure, reduction="sum")  # every rank learns of any rank's failure
        if not failure.item():
            try:
                accelerator.save_state(str(partial), safe_serialization=True)
                if accelerator.is_main_process:
                    save_file(tensors, str(partial / TENSOR_FILE))
                    record = {"stage": self.stage, "step": step, "fingerprint": self.fingerprint, **plain}
                    _write_synced(partial / STATE_FILE, json.dumps(record, indent=1))
            # torch.save and safetensors report a full disk as RuntimeError or SafetensorError, not OSError
            except Exception as caught:  # noqa: BLE001 - re-raised below, named
                error, failure[0] = caught, 1.0
            failure = accelerator.reduce(failure, reduction="sum")
        if failure.item():
            cause = write_failure(error, partial)
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)  # a full disk gets its space back
            accelerator.wait_for_everyone()
            raise CheckpointError(
                f"{self.stage}: could not write checkpoint {partial}: {cause}; "
                f"the previous checkpoint in {self.directory} is intact"
            ) from error
        if accelerator.is_main_process:
            for written in partial.rglob("*"):  # on disk before the rename says the checkpoint is complete
                if written.is_file():
                    _fsync(written)
            shutil.rmtree(folder, ignore_errors=True)  # the same step from an earlier run
            partial.rename(folder)
            _fsync(self.directory)
            self._prune(folder)
        accelerator.wait_for_everyone()
        return folder

    def _prune(self, current: Path) -> None:
        """Remove every checkpoint but the newest ``keep`` of this run's: another run's
        (another fingerprint, or past this step: an earlier, longer run) and partial folders."""
        ours = []
        for folder in sorted(self.directory.glob(f"{CHECKPOINT_PREFIX}*")):
            if folder.name.endswith(PARTIAL_SUFFIX):
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.name <= current.name and read_record(folder).get("fingerprint") == self.fingerprint:
                ours.append(folder)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        for folder in ours[: -self.keep]:
            shutil.rmtree(folder, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint with this stage's fingerprint, or None."""
        if self.directory is None or not self.directory.is_dir():
            return None
        for folder in sorted(self.directory.glob(f"{CHECKPOINT_PREFIX}*"), reverse=True):
            if folder.name.endswith(PARTIAL_SUFFIX):
                continue
            if read_record(folder).get("fingerprint") == self.fingerprint:
                return folder
        return None

    def resume(self) -> Resumed | None:
        """Load the checkpoint ``resume`` asks for into the accelerator's objects (every rank),
        and return the loop's state; None to start from step 0.

        ``auto``: the newest checkpoint of this configuration, if any; ``never``: none; a path:
        that checkpoint, which must exist and have been written by this configuration. The main
        process chooses and the others follow, so that every rank loads the same one (or none);
        a rank that cannot read it fails every rank, with the checkpoint named.
        """
        accelerator = self.accelerator
        choice: list[str | None] = [None, None]  # the folder, or the reason none can be resumed
        if accelerator.is_main_process:
            try:
                folder = self._choose()
                choice[0] = None if folder is None else str(folder)
            except CheckpointError as error:
                choice[1] = str(error)
        if accelerator.num_processes > 1:
            choice = broadcast_object_list(choice, from_process=0)
        if choice[1] is not None:
            raise CheckpointError(choice[1])
        if choice[0] is None:
            return None
        folder = Path(choice[0])
        record = read_record(folder)
        failed, error = torch.zeros(1, device=accelerator.device), None
        try:
            accelerator.load_state(str(folder))
            tensors = load_file(str(folder / TENSOR_FILE)) if (folder / TENSOR_FILE).exists() else {}
        except Exception as caught:  # noqa: BLE001 - torch, safetensors and pickle each raise their own; re-raised below
            failed[0], error = 1.0, caught
        if accelerator.num_processes > 1:
            failed = accelerator.reduce(failed, reduction="sum")
        if failed.item():
            older = [p.name for p in sorted(folder.parent.glob(f"{CHECKPOINT_PREFIX}????????")) if p < folder]
            cause = f"{type(error).__name__}: {error}" if error is not None else "another rank could not"
            raise CheckpointError(
                f"{self.stage}: could not read checkpoint {folder} ({cause}); rerun with "
                f"{self.stage}.resume=never, or resume from an older one ({', '.join(older) or 'none'})"
            ) from error
        state = {name: value for name, value in record.items() if name not in ("stage", "step", "fingerprint")}
        logger.warning("%s: resuming from %s (step %d)", self.stage, folder, record["step"])
        return Resumed(step=int(record["step"]), state={**state, **tensors}, folder=folder)

    def _choose(self) -> Path | None:
        """The checkpoint ``resume`` names (the main process decides)."""
        setting = self.setting
        if setting == "never" or self.directory is None and setting == "auto":
            return None
        if setting == "auto":
            folder = self.latest()
            if folder is None and self.directory is not None and any(self.directory.glob(f"{CHECKPOINT_PREFIX}*")):
                logger.info("%s: the checkpoints in %s are another configuration's; starting afresh",
                            self.stage, self.directory)
            return folder
        folder = Path(setting)
        record = read_record(folder)
        if not record:
            raise CheckpointError(f"{self.stage}: resume: {folder} is not a complete checkpoint ({STATE_FILE} missing)")
        if record.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.stage}: resume: {folder} was written with another configuration, data or "
                "starting model; its state would not continue this run"
            )
        return folder


def read_record(folder: Path, name: str = STATE_FILE) -> dict[str, Any]:
    """A complete checkpoint's ``step.json`` (or another record file ``name`` of a folder, as
    snapshots' ``snapshot.json``); {} for a partial or unreadable one."""
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return {}


def _write_synced(path: Path, text: str) -> None:
    path.write_text(text)
    _fsync(path)


def _fsync(path: Path) -> None:
    """fsync a file or a folder: after a power cut, a renamed (complete) checkpoint must not
    hold empty files, nor the rename be lost."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
