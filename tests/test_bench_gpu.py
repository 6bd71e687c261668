"""bench/gpu.py (``make bench-gpu``) runs end to end and writes every figure it promises.

The smoke mode runs the tiny workload on the CPU, first in one process, then in two gloo
ranks under torchrun, which is the path several GPUs take. Keys, types and the sizes
the figures are computed from are checked; timings never are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
STAGE_FIGURES = {
    "sft": ("tokens_per_s", "tokens_per_step", "step_s", "model_flops_per_s"),
    "dpo": ("tokens_per_s", "pairs_per_s", "tokens_per_step", "step_s", "model_flops_per_s", "loop_setup_s",
            "reference_tokens_per_s", "with_reference_tokens_per_s"),
    "ppo": ("episodes_per_s", "generation_tokens_per_s", "mean_response_tokens", "generation_share", "iteration_s"),
}
MFU_KEYS = {"sft": ("mfu",), "dpo": ("mfu", "reference_mfu", "with_reference_mfu"), "ppo": ()}


def run_script(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU, even where a GPU is present
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_smoke_run_writes_every_figure_for_one_and_two_processes(tmp_path):
    out = tmp_path / "bench_gpu.json"
    result = run_script("--smoke", "--processes", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["device"] == "cpu" and report["device_count"] == 0 and report["smoke"] is True
    assert report["precision"] == "no" and isinstance(report["torch"], str)
    assert report["peak_flops"] is None and "no GPU" in report["peak_flops_note"]  # no MFU without a peak
    model, workload, flops = report["model"], report["workload"], report["flops_per_token"]
    assert isinstance(flops["parameters"], int) and 0 < flops["matmul_parameters"] < flops["parameters"]
    assert model["vocab_size"] == workload["vocab_size"]  # the BPE reached the size asked for
    row_tokens = report["row_tokens"]
    assert row_tokens == workload["prompt_tokens"] + workload["response_tokens"]
    attention = 4 * workload["num_layers"] * workload["hidden_size"] * row_tokens
    assert flops["forward"] == 2 * flops["matmul_parameters"] + attention and flops["trained"] == 3 * flops["forward"]
    assert [run["processes"] for run in report["runs"]] == [1, 2]

    for run in report["runs"]:
        assert run["flops_per_token"] == flops
        stages = run["stages"]
        assert set(stages) == set(STAGE_FIGURES)
        for stage, keys in STAGE_FIGURES.items():
            for key in keys:
                value = stages[stage][key]
                assert isinstance(value, (int, float)) and value > 0, (run["processes"], stage, key, value)
            for key in (*MFU_KEYS[stage], "peak_memory_gib", "peak_reserved_gib"):
                assert stages[stage][key] is None, (stage, key)  # CPU: no peak FLOP/s, no GPU memory
        rows = row_tokens * run["processes"]
        assert stages["sft"]["tokens_per_step"] == workload["sft_batch"] * rows
        assert stages["dpo"]["tokens_per_step"] == 2 * workload["dpo_batch"] * rows
        for stage in ("sft", "dpo"):
            assert stages[stage]["model_flops_per_s"] == pytest.approx(flops["trained"] * stages[stage]["tokens_per_s"])
        assert 0 < stages["ppo"]["mean_response_tokens"] <= workload["ppo_new_tokens"]

    scaling = report["scaling_efficiency"]
    assert set(scaling) == set(STAGE_FIGURES)
    assert all(isinstance(v, float) and v > 0 for figures in scaling.values() for v in figures.values())
    assert "sft" in result.stdout and "tokens_per_s" in result.stdout  # the table


def test_without_cuda_it_refuses_unless_smoke(tmp_path):
    out = tmp_path / "bench_gpu.json"
    result = run_script("--out", str(out), timeout=120)
    assert result.returncode != 0
    assert "no CUDA device" in result.stderr and "--smoke" in result.stderr
    assert not out.exists()


def test_the_full_workload_has_full_rows_and_its_parameter_count():
    """What the GPU run builds before its first step: a 32k BPE, 512-token rows, 134M parameters,
    and the FLOPs of a token as make bench counts them."""
    import torch

    from alignops.models import build_causal_lm
    from bench import gpu

    lexicon = gpu.make_lexicon(gpu.FULL)
    tokenizer = gpu.make_tokenizer(gpu.FULL, lexicon)
    config = gpu.model_config(gpu.FULL)
    assert len(tokenizer) == gpu.FULL.vocab_size
    assert gpu.full_rows(tokenizer, gpu.synthetic_texts(gpu.FULL, lexicon, 1), config) == 512
    with torch.device("meta"):  # shapes only
        model = build_causal_lm(config, tokenizer)
    flops = gpu.flops_per_token(model, 512)
    assert flops["parameters"] == 134_105_856
    assert flops["matmul_parameters"] == 134_105_856 - 32_000 * 768 - 25 * 768  # not the input embedding, the norms
    assert flops["trained"] == 6 * flops["matmul_parameters"] + 12 * 12 * 768 * 512

    short = gpu.synthetic_texts(gpu.SMOKE, lexicon, 1)  # texts for 32-token rows
    with pytest.raises(RuntimeError, match="not all 512"):
        gpu.full_rows(tokenizer, short, config)


def test_peak_flops_by_device_name():
    from bench.gpu import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", None)[0] == 989e12  # SXM
    assert peak_flops("NVIDIA H100 PCIe", None)[0] == 756e12
    assert peak_flops("NVIDIA H100 NVL", None)[0] == 835e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", None)[0] == 312e12
    assert peak_flops("NVIDIA L40S", None)[0] == 362e12 and peak_flops("NVIDIA L4", None)[0] == 121e12
    flops, note = peak_flops("NVIDIA GeForce RTX 4090", None)
    assert flops is None and "--peak-tflops" in note
    assert peak_flops("NVIDIA GeForce RTX 4090", 165.0)[0] == 165e12
