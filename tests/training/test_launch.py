"""Training stages in several processes: real `torchrun` launches of two CPU ranks (gloo),
started by the stage's own Kedro node, plus the launcher's pieces on their own."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from alignops.catalog.models import HFModelDataset
from alignops.catalog.reward_model import RewardModelDataset
from alignops.core.masked import masked_whiten
from alignops.models.loading import load_model
from alignops.training.handoff import model_digest, read_value, write_value
from alignops.training.launch import (
    LAUNCHED_ENV,
    check_ranks_agree,
    clear_abandoned_handoffs,
    launch_command,
    wants_launch,
)
from alignops.training.ranks import global_mean, shard_batches
from tests.helpers import KEDRO, last_run, run_kedro, stage_history

# stage: (the data/ snapshot it starts from, the model it saves, a metric it logs every logged step)
STAGES = {
    "sft": ("data_validation", "sft", "loss/sft"),
    "reward": ("sft", "reward", "loss/reward"),
    "audit_judge": ("sft", "audit_judge", "loss/audit_judge"),  # the reward recipe: params:reward launches it
    "dpo": ("sft", "dpo", "loss/dpo"),
    "ppo": ("reward", "ppo", "objective/scores"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_trains_in_two_ranks_that_agree_and_hands_back_one_model(stage, project_after, tmp_path,
                                                                         monkeypatch):
    upstream, folder, metric = STAGES[stage]
    project = project_after(upstream)
    handoff = tmp_path / "handoff"
    handoff.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(handoff))
    params = "reward" if stage == "audit_judge" else stage
    # PPO with its SFT loss on (ptx): a second forward and backward per update, which DDP must sync too
    extra = {"ptx_coef": 0.5} if stage == "ppo" else {}
    run_kedro(project, env="test", pipeline_names=[stage], runtime_params={params: {"num_processes": 2, **extra}})

    client, run = last_run(project)
    assert run.info.status == "FINISHED"
    assert run.data.tags[f"launch.{stage}.processes"] == "2 (torchrun)"
    # the model the catalog saved is the one both ranks ended with (the launch refuses otherwise)
    saved = project / "data" / "06_models" / folder
    model = RewardModelDataset(filepath=str(saved)).load() if stage in ("reward", "audit_judge") else HFModelDataset(
        filepath=str(saved)).load()
    assert run.data.tags[f"launch.{stage}.model_sha256"] == model_digest(model)
    assert list(saved.rglob("*.safetensors")) and not list(saved.rglob("*.bin"))  # reward: a folder per member
    # logged once: one MLflow point per step, the steps of the stage's own history
    steps = [point.step for point in client.get_metric_history(run.info.run_id, metric)]
    assert steps and len(steps) == len(set(steps))
    assert sorted(steps) == [row["step"] for row in stage_history(project, stage) if metric in row]
    assert all("ptx/nll" in row for row in stage_history(project, stage)) == (stage == "ppo")
    assert not list(handoff.iterdir())  # the hand-off folder is gone


@pytest.mark.slow
def test_an_accelerate_config_file_launches_the_stage_through_accelerate(project_after, tmp_path):
    project = project_after("data_validation")
    config = tmp_path / "cpu.yaml"  # what `accelerate config` writes for one CPU process
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_machines: 1\n"
                      "num_processes: 1\nmixed_precision: 'no'\nuse_cpu: true\n")
    run_kedro(project, env="test", pipeline_names=["sft"], runtime_params={"sft": {"accelerate_config": str(config)}})
    _, run = last_run(project)
    assert run.data.tags["launch.sft.processes"] == "1 (accelerate launch)"
    model = HFModelDataset(filepath=str(project / "data" / "06_models" / "sft")).load()
    assert run.data.tags["launch.sft.model_sha256"] == model_digest(model)


def test_the_shipped_accelerate_configs_are_accelerate_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[2] / "conf" / "accelerate"
    configs = sorted(folder.glob("*.yaml"))
    assert configs
    for path in configs:
        config = load_config_from_file(str(path))
        assert config.num_machines == (2 if path.stem == "two_nodes" else 1), path.name
        if config.distributed_type != "DEEPSPEED":
            assert config.mixed_precision == "bf16", path.name
            continue
        # DeepSpeed: a JSON beside it whose batch, accumulation, clipping and precision are the stage's
        ds = json.loads((folder.parents[1] / config.deepspeed_config["deepspeed_config_file"]).read_text())
        auto = [ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"],
                ds["bf16"]["enabled"]]
        assert auto == ["auto"] * 4, path.name


# steps at a full rate on unpacked rows (different token counts per row): a rank's mean loss
# is then not the global mean, and weighting it wrongly shows in the losses within a few steps
HARD = {"packing": False, "max_steps": 8, "warmup_steps": 0, "learning_rate": 0.02, "eval_every": 4}


@pytest.mark.slow
def test_two_ranks_reach_the_loss_of_one_process_at_the_same_global_batch(project_after):
    project = project_after("data_validation")
    # unpacked rows hold different token counts, so a rank's mean is not the global mean
    run_kedro(project, env="test", pipeline_names=["sft"], runtime_params={"sft": {**HARD, "batch_size": 4}})
    one = stage_history(project, "sft")
    run_kedro(project, env="test", pipeline_names=["sft"],
              runtime_params={"sft": {**HARD, "batch_size": 2, "num_processes": 2}})
    two = stage_history(project, "sft")

    for name in ("loss/sft", "eval/sft/loss"):
        a = [row[name] for row in one if name in row]
        b = [row[name] for row in two if name in row]
        assert len(a) == len(b) > 0
        # the same rows per optimiser step, split across ranks; only the order of float sums
        # differs (measured: 1.4e-7 relative; 1.3e-3 with each rank's mean weighted equally)
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_kedro_run_stopped_mid_launch_leaves_no_rank_behind(sig, project_after, tmp_path):
    project = project_after("data_validation")
    temp = tmp_path / "temp"  # where the launch puts its hand-off folder
    temp.mkdir()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1",
           "TMPDIR": str(temp)}
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(
            [str(KEDRO), "run", "--env", "test", "--pipelines", "sft",
             "--params", "sft.num_processes=2,sft.max_steps=100000,sft.checkpoint_every=0"],
            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline, ranks = time.monotonic() + 180, []
        while time.monotonic() < deadline and len(ranks) < 2:  # both ranks started (torchrun's children)
            time.sleep(0.5)
            family = psutil.Process(run.pid).children(recursive=True)
            ranks = [p for p in family if _is_rank(p)]
        assert len(ranks) == 2, (tmp_path / "run.log").read_text()[-3000:]
        family = psutil.Process(run.pid).children(recursive=True)
        os.kill(run.pid, sig)
        run.wait(timeout=60)
        gone, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, [p.cmdline() for p in alive]
        left = sorted(temp.glob("alignops-launch-*"))
        if sig == signal.SIGTERM:
            assert not left  # the launch cleaned up after itself
        else:  # nothing runs on SIGKILL: the next launch clears the dead run's folder
            assert [folder.name.split("-")[2] for folder in left] == [str(run.pid)]
            assert clear_abandoned_handoffs(temp) == left and not list(temp.glob("alignops-launch-*"))
    finally:
        if run.poll() is None:
            run.kill()


def _is_rank(process: psutil.Process) -> bool:
    try:
        command = process.cmdline()
        return "alignops.training.launch" in command and "torch.distributed.run" not in command
    except psutil.NoSuchProcess:
        return False


# --- the pieces --------------------------------------------------------------------------------


def test_a_reward_model_that_is_not_trained_is_not_launched():
    from alignops.training.reward_config import RewardConfig

    with pytest.raises(ValueError, match="reward.train is false"):
        RewardConfig(train=False, base="some/classifier", num_processes=2)


def test_ranks_that_disagree_fail_the_stage():
    check_ranks_agree("sft", {"digests": [["a", None], ["a", None]]})
    with pytest.raises(RuntimeError, match="ranks' models differ"):
        check_ranks_agree("sft", {"digests": [["a", None], ["b", None]]})


def test_a_launch_is_asked_for_by_processes_or_a_config_file_and_never_from_a_rank(monkeypatch):
    monkeypatch.delenv(LAUNCHED_ENV, raising=False)
    assert not wants_launch({"num_processes": 1, "accelerate_config": None})
    assert wants_launch({"num_processes": 2})
    assert wants_launch({"num_processes": 1, "accelerate_config": "conf/accelerate/ddp.yaml"})
    monkeypatch.setenv(LAUNCHED_ENV, "1")
    assert not wants_launch({"num_processes": 2})


def test_the_launcher_is_torchrun_without_a_config_and_accelerate_with_one(tmp_path):
    command = launch_command(tmp_path, 2, None)
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in command
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        launch_command(tmp_path, 2, str(tmp_path / "missing.yaml"))
    config = tmp_path / "ddp.yaml"
    config.write_text("distributed_type: MULTI_GPU\n")
    command = launch_command(tmp_path, 1, str(config))
    assert Path(command[0]).name == "accelerate" and command[1:4] == ["launch", "--config_file", str(config)]
    assert "--num_processes" not in command  # the file's own count applies
    for sharded in ("distributed_type: FSDP\n", "distributed_type: DEEPSPEED\n"):
        config.write_text(sharded)
        assert launch_command(tmp_path, 2, str(config))[1:4] == ["launch", "--config_file", str(config)]
    config.write_text("distributed_type: MEGATRON_LM\n")
    with pytest.raises(ValueError, match="ddp.yaml: distributed_type MEGATRON_LM is not supported yet"):
        launch_command(tmp_path, 2, str(config))


def test_values_cross_the_process_boundary_intact(tmp_path, sft_model, tokenizer):
    frame = pd.DataFrame({"prompt": ["a", "b"], "chosen": ["x", "y"]})
    for name, value in {"frame": frame, "rows": [{"step": 1, "loss": 0.5}], "none": None}.items():
        meta = write_value(tmp_path / name, value)
        back = read_value(tmp_path / name, meta)
        assert back.equals(value) if isinstance(value, pd.DataFrame) else back == value
    meta = write_value(tmp_path / "model", sft_model)
    assert meta == {"kind": "causal_lm", "dtype": "float32", "trust_remote_code": False}
    assert model_digest(read_value(tmp_path / "model", meta)) == model_digest(sft_model)
    assert read_value(tmp_path / "tok", write_value(tmp_path / "tok", tokenizer)).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(TypeError, match="cannot hand object"):
        write_value(tmp_path / "odd", object())


def test_model_digests_see_a_changed_weight(sft_model):
    model = copy.deepcopy(sft_model)
    before = model_digest(model)
    assert model_digest("not a model") is None
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert model_digest(model) != before


def _ranks(world: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(num_processes=world, process_index=r, device=torch.device("cpu")) for r in range(world)]


@pytest.mark.parametrize(("rows", "batch_size", "world"), [(10, 3, 2), (5, 4, 3), (7, 7, 2), (9, 2, 1)])
def test_held_out_batches_count_every_row_once_in_equal_passes(rows, batch_size, world):
    loader = DataLoader(range(rows), batch_size=batch_size, collate_fn=lambda i: {"row": torch.tensor(i)})
    seen, passes = [], set()
    for accelerator in _ranks(world):
        shares = list(shard_batches(loader, accelerator))
        passes.add(len(shares))
        seen += [int(r) for batch, counted in shares if counted for r in batch["row"]]
    assert sorted(seen) == list(range(rows)) and len(passes) == 1


def test_one_process_keeps_its_own_loss_and_whitening_over_ranks_is_whitening_over_all():
    loss, weight = torch.tensor(2.5), torch.tensor(7.0)
    assert global_mean(loss, weight, _ranks(1)[0]) is loss

    torch.manual_seed(0)
    x, mask = torch.randn(6, 5), torch.rand(6, 5) > 0.3
    halves = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    # a sum over two ranks, played in one process: each rank's share plus the other's
    for rank, (xs, ms) in enumerate(halves):
        other_x, other_m = halves[1 - rank]
        partial = {}

        def all_reduce_sum(t, _xs=xs, _ms=ms, _ox=other_x, _om=other_m, _p=partial):
            step = len(_p)
            _p[step] = t
            if step == 0:
                zero = torch.zeros(())
                return t + torch.stack([torch.where(_om, _ox, zero).sum(), _om.sum().float()])
            mean = (x[mask]).mean()
            return t + torch.where(_om, (_ox - mean) ** 2, torch.zeros(())).sum()

        got = masked_whiten(xs, ms, all_reduce_sum=all_reduce_sum)
        whole = masked_whiten(x, mask)
        rows = slice(0, 3) if rank == 0 else slice(3, 6)
        assert torch.allclose(got, whole[rows], atol=1e-5)


def test_a_model_with_its_own_code_crosses_with_that_code(tmp_path):
    """A model the run loaded with trust_remote_code (a Hub architecture transformers lacks) is
    saved with its code and read back by it; a plain model never runs code from the folder."""
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'tiny_custom'\n")
    (folder / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_tiny import TinyConfig\n\n"
        "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n")
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    spec = json.loads((folder / "config.json").read_text())
    spec |= {"model_type": "tiny_custom", "architectures": ["TinyForCausalLM"], "auto_map": {
        "AutoConfig": "configuration_tiny.TinyConfig", "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(spec))
    model = load_model(folder, trust_remote_code=True)

    meta = write_value(tmp_path / "handed", model)
    assert meta["trust_remote_code"] and (tmp_path / "handed" / "modeling_tiny.py").exists()
    back = read_value(tmp_path / "handed", meta)
    assert type(back).__name__ == "TinyForCausalLM" and model_digest(back) == model_digest(model)
    with pytest.raises(ValueError, match="custom code"):  # what the hand-off did before it said so
        read_value(tmp_path / "handed", {**meta, "trust_remote_code": False})
