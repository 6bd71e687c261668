"""Resume after a kill, to the same result: each stage in its own process (``resume_child``),
SIGKILLed in the middle of saving its second checkpoint, run again, and compared bit for bit
with an uninterrupted run; and what ``resume`` does with other runs' checkpoints."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from kedro.io import DatasetError
from safetensors.torch import load_file

import alignops.training.checkpoints as checkpoint_module
from alignops.catalog.models import HFModelDataset
from alignops.models import build_causal_lm
from alignops.training.accelerator import make_accelerator
from alignops.training.checkpoints import CheckpointError, Checkpoints, fingerprint
from alignops.training.common import MetricHistory
from alignops.training.sft import train_sft
from alignops.training.sft_config import SFTConfig
from tests.helpers import REPO_ROOT, TINY_LLAMA, make_tiny_tokenizer, mount_tmpfs, unmount
from tests.training.resume_child import SFT_PROMPTS as PROMPTS
from tests.training.resume_child import SFT_RESPONSES as RESPONSES
from tests.training.resume_child import WALL_CLOCK


def _child(stage: str, checkpoints: Path, out: Path, stall_at: int | None = None, processes: int = 1,
           ) -> subprocess.Popen:
    """The stage in a process of its own (a process group: torchrun and its ranks with ``processes`` > 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("ALIGNOPS_TEST_STALL_AT_SAVE", None)
    if stall_at is not None:
        env["ALIGNOPS_TEST_STALL_AT_SAVE"] = str(stall_at)
    launcher = [sys.executable]
    if processes > 1:  # CPU ranks join accelerate's process group (gloo)
        env["ACCELERATE_USE_CPU"] = "1"
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={processes}"]
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.txt").open("w")
    return subprocess.Popen(
        [*launcher, "-m", "tests.training.resume_child", stage, str(checkpoints), str(out)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _finish(process: subprocess.Popen, out: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    assert process.wait(timeout=300) == 0, (out / "log.txt").read_text()[-3000:]
    return load_file(str(out / "weights.safetensors")), json.loads((out / "history.json").read_text())


@pytest.mark.parametrize(("stage", "processes"), [("sft", 1), ("reward", 1), ("dpo", 1), ("ppo", 1), ("reward", 2)])
def test_a_stage_killed_while_saving_resumes_to_the_same_weights_and_history(stage, processes, tmp_path):
    """Two CPU ranks (gloo) resume bit for bit too: every rank restores its own RNG states and
    the sampler's shards replay the same order (the reward model's grouped batches)."""
    uninterrupted = _child(stage, tmp_path / "reference_checkpoints", tmp_path / "reference", processes=processes)
    killed = _child(stage, tmp_path / "checkpoints", tmp_path / "killed", stall_at=6, processes=processes)
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "stalled").exists():  # checkpoint 3 complete, 6 half-written
        assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed" / "log.txt").read_text()
        time.sleep(0.1)
    ranks = psutil.Process(killed.pid).children(recursive=True)  # torchrun's ranks have sessions of their own
    for process in [psutil.Process(killed.pid), *ranks]:
        process.kill()
    killed.wait(timeout=60)
    psutil.wait_procs(ranks, timeout=60)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003", "step_00000006.partial"]

    resumed = _child(stage, tmp_path / "checkpoints", tmp_path / "resumed", processes=processes)
    weights, history = _finish(resumed, tmp_path / "resumed")
    expected_weights, expected_history = _finish(uninterrupted, tmp_path / "reference")

    log = (tmp_path / "resumed" / "log.txt").read_text()
    assert log.count(f"{stage}: resuming from {tmp_path / 'checkpoints' / 'step_00000003'} (step 3)") == processes
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[name], expected_weights[name]) for name in weights), "weights differ"
    assert history == expected_history  # every metric at every step, the steps before the kill included
    assert [row["step"] for row in history if any(k.startswith("loss/") for k in row)][-1] == 8
    # the partial save was cleared when the resumed run wrote its own step 6; the last step is always kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000006", "step_00000008"]
    if stage == "ppo":
        samples = json.loads((tmp_path / "resumed" / "samples.json").read_text())
        assert samples == json.loads((tmp_path / "reference" / "samples.json").read_text())
        assert [s["step"] for s in samples] == list(range(1, 9))


QUICK = SFTConfig(learning_rate=3e-3, batch_size=2, max_steps=4, warmup_steps=1, log_every=1, eval_every=2,
                  eval_fraction=0.25, eval_batch_size=4, packing=False, checkpoint_every=2)


def _sft(config: SFTConfig, folder: Path, responses=RESPONSES) -> tuple[torch.nn.Module, MetricHistory]:
    history = MetricHistory()
    tokenizer = make_tiny_tokenizer(PROMPTS + RESPONSES)
    return train_sft(tokenizer, PROMPTS, list(responses), TINY_LLAMA, config, history, str(folder)), history


def test_a_finished_run_run_again_resumes_at_its_end_and_returns_the_same_model(tmp_path):
    first, history = _sft(QUICK, tmp_path)
    again, history_again = _sft(QUICK, tmp_path)  # step 4 of 4: nothing left to train
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    assert history_again.rows == history.rows


def _steady(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith(WALL_CLOCK)} for row in rows]


def _fingerprints(folder: Path) -> set[str]:
    return {json.loads((p / "step.json").read_text())["fingerprint"] for p in folder.iterdir()}


def test_never_and_another_configuration_start_afresh_and_an_explicit_path_must_match(tmp_path, caplog):
    _, history = _sft(QUICK, tmp_path)
    (first,) = _fingerprints(tmp_path)
    _, fresh_history = _sft(dataclasses.replace(QUICK, resume="never"), tmp_path)
    assert _steady(fresh_history.rows) == _steady(history.rows)  # trained again from step 1, to the same result

    other = dataclasses.replace(QUICK, learning_rate=1e-3)  # another configuration: its own run from step 1
    with caplog.at_level("INFO"):
        _, other_history = _sft(other, tmp_path)
    assert other_history.rows[0]["step"] == 1
    assert "another configuration's; starting afresh" in caplog.text
    (second,) = _fingerprints(tmp_path)  # the other configuration's checkpoints were pruned
    assert second != first

    with pytest.raises(CheckpointError, match="written with another configuration"):
        _sft(dataclasses.replace(QUICK, resume=str(tmp_path / "step_00000004")), tmp_path)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        _sft(dataclasses.replace(QUICK, resume=str(tmp_path / "nowhere")), tmp_path)
    # the same configuration on other data is not resumed either
    _, changed = _sft(other, tmp_path, responses=["ok " + r for r in RESPONSES])
    assert changed.rows[0]["step"] == 1 and _fingerprints(tmp_path) - {first, second}


def test_the_fingerprint_follows_config_data_and_weights_not_checkpointing_settings():
    base = fingerprint(QUICK, torch.arange(4), torch.nn.Linear(2, 2, bias=False).requires_grad_(False))
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 2, bias=False)
    same = fingerprint(dataclasses.replace(QUICK, keep_checkpoints=5, checkpoint_every=7, resume="never"),
                       torch.arange(4), layer)
    torch.manual_seed(0)
    again = fingerprint(QUICK, torch.arange(4), torch.nn.Linear(2, 2, bias=False))
    assert same == again and base != again  # other weights
    assert fingerprint(dataclasses.replace(QUICK, seed=1), torch.arange(4), layer) != again
    assert fingerprint(QUICK, torch.arange(5), layer) != again


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A real 600 KiB filesystem (tmpfs) that a checkpoint of the tiny Llama fills, where this
    machine lets the tests mount one (root with CAP_SYS_ADMIN); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if not mount_tmpfs(mount, "size=600k"):
        pytest.skip("cannot mount a small filesystem here (needs root with CAP_SYS_ADMIN)")
    yield mount
    unmount(mount)


def _trained_state(folder: Path, keep: int = 1) -> tuple[Checkpoints, torch.nn.Module]:
    """A tiny Llama and its Adam state after one step, checkpointed into ``folder``."""
    accelerator = make_accelerator("no", seed=0, cpu=True)
    tokenizer = make_tiny_tokenizer(PROMPTS + RESPONSES)
    model = build_causal_lm(TINY_LLAMA, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(1, 4, dtype=torch.long)).logits.sum().backward()
    optimizer.step()
    config = dataclasses.replace(QUICK, keep_checkpoints=keep)
    return Checkpoints(accelerator, folder, "sft", config, model), model


def test_a_disk_that_fills_during_a_save_names_it_and_keeps_the_last_checkpoint(small_disk):
    checkpoints, model = _trained_state(small_disk / "checkpoints")
    checkpoints.save(2, {"note": "kept"})  # ~400 KiB of the 600
    with pytest.raises(CheckpointError, match=r"sft: could not write checkpoint .*step_00000004\.partial: .*"
                                               r"the disk is full .*previous checkpoint in .* is intact"):
        checkpoints.save(4, {})
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == ["step_00000002"]  # space given back
    assert checkpoints.resume().state["note"] == "kept"

    # the catalog's model folder on the same disk, filled up by something else: named error, nothing left behind
    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (16 << 10)))
    dataset = HFModelDataset(filepath=str(small_disk / "sft"))
    with pytest.raises(DatasetError, match=r"could not write .*disk/sft: .*the disk is full"):
        dataset.save(model)
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoints", "filler"]


def test_a_write_that_raises_enospc_is_named_a_full_disk(tmp_path, monkeypatch):
    checkpoints, _ = _trained_state(tmp_path)
    checkpoints.save(2, {"note": "kept"})

    def full(tensors, path):
        Path(path).write_bytes(b"\0" * 64)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    with pytest.raises(CheckpointError, match=r"No space left on device \(errno 28\); the disk is full"):
        checkpoints.save(4, {})
    assert checkpoints.latest() == tmp_path / "step_00000002" and not (tmp_path / "step_00000004.partial").exists()


def test_a_read_only_folder_names_the_folder_and_keeps_the_last_checkpoint_and_model(tmp_path, small_disk_or_none):
    root = small_disk_or_none or tmp_path
    checkpoints, model = _trained_state(root / "checkpoints")
    checkpoints.save(2, {"note": "kept"})
    dataset = HFModelDataset(filepath=str(root / "sft"))
    dataset.save(model)
    before = (root / "sft" / "model.safetensors").read_bytes()
    if small_disk_or_none is not None:  # root: only a read-only mount stops it
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    else:
        (root / "checkpoints").chmod(0o555)
        root.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_00000004\.partial: "
                                                   r"(Read-only file system|Permission denied)"):
            checkpoints.save(4, {})
        with pytest.raises(CheckpointError, match=r"sft: cannot write checkpoints to .*checkpoints: "
                                                   r"(Read-only file system|Permission denied)"):
            _trained_state(root / "checkpoints")  # a stage that would checkpoint there fails before training
        with pytest.raises(DatasetError, match=r"could not write .*sft: (Read-only file system|Permission denied)"
                                               r".*the previous one is untouched"):
            dataset.save(model)
    finally:
        if small_disk_or_none is not None:
            subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
        else:
            root.chmod(0o755)
            (root / "checkpoints").chmod(0o755)
    assert checkpoints.resume().state["note"] == "kept"
    assert (root / "sft" / "model.safetensors").read_bytes() == before


@pytest.fixture
def small_disk_or_none(tmp_path):
    """Not root: None (file permissions stop the writes); root: a small filesystem to remount
    read-only, or skipped where none can be mounted."""
    if os.geteuid() != 0:
        yield None
        return
    mount = tmp_path / "ro_disk"
    mount.mkdir()
    if not mount_tmpfs(mount, "size=4m"):
        pytest.skip("running as root, whom permissions do not stop, and no filesystem can be mounted read-only")
    yield mount
    unmount(mount)


def test_a_model_save_killed_between_its_renames_is_recovered_and_its_leftovers_cleared(tmp_path):
    checkpoints, model = _trained_state(tmp_path / "checkpoints")
    dataset = HFModelDataset(filepath=str(tmp_path / "sft"))
    dataset.save(model)
    (tmp_path / "sft").rename(tmp_path / ".sft.previous")  # killed after moving the old one aside
    (tmp_path / ".sft.k1ll3d").mkdir()  # and a staging folder an earlier kill left
    (tmp_path / ".sft.k1ll3d" / "model.safetensors").write_bytes(b"half")
    dataset.save(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "sft"]
    reloaded = dataset.load()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(),
                                                  strict=True))
