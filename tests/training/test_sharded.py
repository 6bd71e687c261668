"""Sharded training: the shipped FSDP and DeepSpeed ZeRO configs (``conf/accelerate/``) run as
a user runs them, a stage's Kedro node launching two real CPU ranks through ``accelerate
launch`` (gloo; torch's FSDP2, DeepSpeed's CPU accelerator), plus the pieces that make a
sharded model behave: lockstep reference passes, refusals."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import torch

from alignops.catalog.models import HFModelDataset
from alignops.training.accelerate_config import check_sharded_stage
from alignops.training.dpo import reference_logprobs
from alignops.training.handoff import model_digest
from tests.helpers import REPO_ROOT, last_run, run_kedro, stage_history

CONFIGS = {
    "fsdp": ("pytorch_model_fsdp_0", ["__0_0.distcp", "__1_0.distcp"]),
    "deepspeed_zero2": ("pytorch_model", ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                          "zero_pp_rank_1_mp_rank_00_optim_states.pt"]),
    "deepspeed_zero3": ("pytorch_model", ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                          "zero_pp_rank_1_mp_rank_00_optim_states.pt"]),
}
"""config: (the checkpoint folder holding each rank's shard, the shard files of two ranks)"""
UPSTREAM = {"sft": "data_validation", "dpo": "sft"}
METRIC = {"sft": "loss/sft", "dpo": "loss/dpo"}


def on_cpu(config: str) -> dict:
    """A stage's parameters for a shipped config on this machine: the files ask bf16 for GPUs
    (or leave it to the stage); fp32 keeps the CPU comparisons exact."""
    return {"accelerate_config": str(REPO_ROOT / "conf" / "accelerate" / f"{config}.yaml"), "mixed_precision": "no"}


def _checkpoints(project, stage):
    return sorted((project / "data" / "06_models" / "checkpoints" / stage).glob("step_*"))


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_sharded_launch_trains_a_stage_over_two_cpu_ranks_and_hands_back_the_whole_model(
        stage, config, project_after, tmp_path, monkeypatch):
    project = project_after(UPSTREAM[stage])
    handoff = tmp_path / "handoff"
    handoff.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(handoff))
    run_kedro(project, env="test", pipeline_names=[stage], runtime_params={stage: on_cpu(config)})

    client, run = last_run(project)
    assert run.info.status == "FINISHED"
    assert run.data.tags[f"launch.{stage}.processes"] == "2 (accelerate launch)"
    saved = project / "data" / "06_models" / stage
    model = HFModelDataset(filepath=str(saved)).load()  # the gathered full model, as one process saves it
    assert model.dtype == torch.float32
    assert run.data.tags[f"launch.{stage}.model_sha256"] == model_digest(model)
    assert list(saved.glob("*.safetensors")) and not list(saved.glob("*.bin"))
    steps = [point.step for point in client.get_metric_history(run.info.run_id, METRIC[stage])]
    assert steps and sorted(steps) == [row["step"] for row in stage_history(project, stage) if METRIC[stage] in row]
    # the ranks held shards: each checkpoint's optimiser state is one file per rank
    folder, shards = CONFIGS[config]
    last = _checkpoints(project, stage)[-1]
    assert sorted(p.name for p in (last / folder).iterdir() if p.name.startswith(("__", "zero_pp"))
                  and ("optim" in p.name or p.suffix == ".distcp")) == shards
    assert not list(last.glob("model*.safetensors"))  # a data-parallel checkpoint holds the whole model
    assert not list(handoff.iterdir())


# unpacked rows at a full rate: the same rows per optimiser step in every launch
HARD = {"packing": False, "max_steps": 8, "warmup_steps": 0, "learning_rate": 0.02, "eval_every": 4,
        "batch_size": 2, "checkpoint_every": 4}


@pytest.mark.slow
def test_sharded_launches_reach_the_losses_and_weights_of_data_parallel_and_resume_from_their_shards(
        project_after, capfd):
    project = project_after("data_validation")
    saved = HFModelDataset(filepath=str(project / "data" / "06_models" / "sft"))
    run_kedro(project, env="test", pipeline_names=["sft"], runtime_params={"sft": {**HARD, "num_processes": 2}})
    ddp, ddp_model = stage_history(project, "sft"), saved.load()

    for config in sorted(CONFIGS):
        shutil.rmtree(project / "data" / "06_models" / "checkpoints" / "sft")
        params = {"sft": {**HARD, **on_cpu(config)}}
        run_kedro(project, env="test", pipeline_names=["sft"], runtime_params=params)
        sharded, sharded_model = stage_history(project, "sft"), saved.load()
        for name in ("loss/sft", "eval/sft/loss"):
            a, b = [row[name] for row in ddp if name in row], [row[name] for row in sharded if name in row]
            assert len(a) == len(b) > 0
            # same rows, same global mean; only the order of float sums differs
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), (config, name)
        for (name, p), q in zip(ddp_model.state_dict().items(), sharded_model.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{config}: {name}")

        if config == "deepspeed_zero2":
            continue  # DeepSpeed's checkpoints are zero3's code path; one resume each for FSDP and DeepSpeed
        # resumed from the step-4 shards after the step-8 checkpoint is lost: the same weights, bit for bit
        steps = _checkpoints(project, "sft")
        assert [s.name for s in steps] == ["step_00000004", "step_00000008"], config
        shutil.rmtree(steps[-1])
        capfd.readouterr()
        run_kedro(project, env="test", pipeline_names=["sft"], runtime_params=params)
        assert "step_00000004 (step 4)" in capfd.readouterr().err, config  # "sft: resuming from <folder> (step 4)"
        assert model_digest(saved.load()) == model_digest(sharded_model), config


def test_every_rank_makes_the_busiest_ranks_passes_when_the_reference_is_sharded(tiny_policy_rows):
    model, rows = tiny_policy_rows
    calls = []
    forward = model.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    model.forward = counted
    whole = reference_logprobs(model, rows, 3, False, torch.device("cpu"))
    distinct = len(calls)
    assert distinct == 3  # 7 distinct rows, 3 at a time
    for lockstep, passes in ((False, [2, 1]), (True, [2, 2])):
        parts = []
        for rank in range(2):
            calls.clear()
            parts.append(reference_logprobs(model, rows, 3, False, torch.device("cpu"), (rank, 2), None, lockstep))
            assert len(calls) == passes[rank], (lockstep, rank)
        torch.testing.assert_close(parts[0] + parts[1], whole, rtol=0, atol=0)  # fillers change nothing


@pytest.fixture
def tiny_policy_rows():
    from tests.helpers import make_tiny_policy, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_policy(tokenizer).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (8, 12), generator=g)
    ids[7] = ids[6]  # a repeated row is scored once
    mask = torch.ones_like(ids)
    mask[::2, 9:] = 0
    labels = torch.zeros_like(ids, dtype=torch.bool)
    labels[:, 6:] = True
    return model, {"input_ids": ids, "attention_mask": mask, "completion_mask": (labels & mask.bool()).long()}


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharding_is_refused_where_it_does_not_run_yet(kind):
    settings = {"distributed_type": kind}
    for stage in ("sft", "dpo"):
        check_sharded_stage(stage, {}, settings, "x.yaml")
        check_sharded_stage(stage, {"lora": None}, settings, "x.yaml")
        with pytest.raises(ValueError, match=f"{stage}: lora with {kind}"):
            check_sharded_stage(stage, {"lora": {"r": 4}}, settings, "x.yaml")
    for stage in ("reward", "audit_judge", "ppo"):
        with pytest.raises(ValueError, match=f"{stage}: x.yaml asks for {kind}"):
            check_sharded_stage(stage, {}, settings, "x.yaml")
        check_sharded_stage(stage, {}, {"distributed_type": "MULTI_GPU"}, "ddp.yaml")


def test_deepspeed_on_cpu_compiles_no_shared_memory_op_unless_asked(monkeypatch):
    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op

    from alignops.training.accelerator import CPU_SHM_SWITCH, _without_cpu_shm_op

    table = deepspeed.ops.__compatible_ops__
    monkeypatch.setitem(table, "deepspeed_shm_comm", True)
    monkeypatch.setenv(CPU_SHM_SWITCH, "1")
    _without_cpu_shm_op()
    assert table["deepspeed_shm_comm"] is True  # asked for: DeepSpeed decides, as it would alone
    monkeypatch.delenv(CPU_SHM_SWITCH)
    _without_cpu_shm_op()
    assert build_shm_op() is None  # DeepSpeed's own check now skips the op: nothing is compiled
