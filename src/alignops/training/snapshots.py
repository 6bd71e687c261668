"""The policy alone at regular steps of a loop, kept for evaluation after training.

A checkpoint is a loop's whole state, kept only until the next two replace it; a
snapshot is the model alone (safetensors, as ``save_model`` writes it), kept for the
run: PPO's snapshots are the points of the reward–KL frontier, where over-optimisation
shows as the judge's score peaking while the reward model's keeps rising (Gao, Schulman
and Hilton 2022), and the peak, not the last step, is what the registry is then offered.

Snapshots live in the stage's checkpoint folder (``<checkpoints>/snapshots/step_<n>``),
so a killed run that resumes keeps those it wrote before the kill. Each records the
fingerprint of the run that wrote it (``alignops.training.checkpoints``); a run lists
only its own, and removes another run's when it writes its first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator
from transformers import PreTrainedModel

from alignops.models.io_errors import write_failure
from alignops.training.checkpoints import CHECKPOINT_PREFIX, PARTIAL_SUFFIX, CheckpointError, read_record
from alignops.training.lora import save_merged

FOLDER = "snapshots"
RECORD = "snapshot.json"


class Snapshots:
    """``every`` steps (never the last: the stage's model is that one), the main process
    writes the model into ``<directory>/snapshots/step_<n>``; ``directory`` None or
    ``every`` 0 writes none."""

    def __init__(self, accelerator: Accelerator, directory: str | Path | None, stage: str, every: int,
                 fingerprint: str) -> None:
        self.accelerator = accelerator
        self.directory = Path(directory) / FOLDER if directory else None
        self.stage, self.every, self.fingerprint = stage, every, fingerprint

    def due(self, step: int, last: int) -> bool:
        return self.directory is not None and self.every > 0 and step % self.every == 0 and step < last

    def save(self, step: int, model: PreTrainedModel) -> None:
        """Write snapshot ``step`` (main process; the others wait): a plain model, a ``PeftModel``'s
        adapters merged in (the model keeps training on its adapters). Atomic: written into a
        ``.partial`` folder, renamed when complete; raises ``CheckpointError`` naming the cause."""
        assert self.directory is not None
        if self.accelerator.is_main_process:
            folder = self.directory / f"{CHECKPOINT_PREFIX}{step:08d}"
            partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
            try:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                save_merged(model, partial)
                (partial / RECORD).write_text(json.dumps({"step": step, "fingerprint": self.fingerprint}))
                shutil.rmtree(folder, ignore_errors=True)  # the same step of an earlier run
                partial.rename(folder)
            except Exception as error:
                shutil.rmtree(partial, ignore_errors=True)
                raise CheckpointError(
                    f"{self.stage}: could not write snapshot {partial}: {write_failure(error, partial)}"
                ) from error
            for other in self.directory.iterdir():  # another run's, and kills' partial folders
                if other == folder:
                    continue
                partial_or_theirs = other.name.endswith(PARTIAL_SUFFIX) or (
                    read_record(other, RECORD).get("fingerprint") != self.fingerprint
                )
                if partial_or_theirs:
                    shutil.rmtree(other, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def written(self, last: int) -> dict[int, Path]:
        """This run's snapshots up to step ``last``, by step (a resumed run's include those
        written before the kill)."""
        if self.directory is None or not self.directory.is_dir():
            return {}
        found = {}
        for folder in sorted(self.directory.glob(f"{CHECKPOINT_PREFIX}*")):
            record = read_record(folder, RECORD)
            if record.get("fingerprint") == self.fingerprint and 0 < record.get("step", 0) <= last:
                found[int(record["step"])] = folder
        return found


def snapshot_name(step: int) -> str:
    """The catalog's name of snapshot ``step`` (``ppo_snapshots``): ``step_000010``, zero-padded
    so that names sort as steps do."""
    return f"step_{step:06d}"


def snapshot_step(name: str) -> int:
    """The step of a snapshot named by ``snapshot_name``."""
    return int(name.removeprefix("step_"))
