"""The benchmark harness (bench/run.py) runs our loops and writes every figure it promises.

Only the harness is checked here: keys, types and the TRL merge. Timings belong to
the benchmark and its note, never to a test.
"""

from __future__ import annotations

import json

import pytest
import torch

from bench import run as bench

REQUIRED = (
    "sft_tokens_per_s",
    "rm_pairs_per_s",
    "ppo_episodes_per_s",
    "ppo_generation_tokens_per_s",
    "dpo_pairs_per_s",
    "peak_rss_mb",
    "device",
)


@pytest.mark.slow
def test_smoke_run_writes_every_figure_and_the_trl_workspace(project_after, monkeypatch):
    project_copy = project_after("data_validation")  # the data stages' outputs, built once per session
    threads = torch.get_num_threads()
    monkeypatch.chdir(project_copy)  # run.py moves into the project; the fixture moves back
    try:
        assert bench.main(["--smoke", "--project-dir", str(project_copy), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)

    report = json.loads((project_copy / "data" / "08_reporting" / "bench_smoke.json").read_text())
    assert set(REQUIRED) <= set(report)
    for key in REQUIRED[:-1]:
        assert isinstance(report[key], float) and report[key] > 0, key
    assert set(report["per_cpu_s"]) >= {"rm_pairs_per_cpu_s", "dpo_pairs_per_cpu_s", "ppo_episodes_per_cpu_s"}
    assert report["device"] in {"cpu", "cuda", "mps", "xpu"}
    assert report["smoke"] and report["threads"] == 1
    assert "speedup" not in report  # no TRL results in a fresh project
    assert report["size"] == "tiny" and report["model"]["parameters"] > 0
    assert report["matmul"]["threads"] == 1 and report["matmul_gflops_per_s"] > 0
    assert_model_flops(report)

    workspace = project_copy / "data" / "06_models" / "bench_smoke"
    workload = json.loads((workspace / "workload.json").read_text())
    assert {"reward", "dpo", "ppo"} <= set(workload) and workload["threads"] == 1
    assert workload["size"] == "tiny" and workload["model"] == report["model"]
    assert (workspace / "policy" / "config.json").is_file()
    assert (workspace / "reward_model" / "config.json").is_file()  # TRL's PPO scores with our reward model
    assert (workspace / "tokenizer" / "tokenizer_config.json").is_file()
    pair = json.loads((workspace / "pairs.jsonl").read_text().splitlines()[0])
    assert set(pair) == {"prompt", "chosen", "rejected"}


def assert_model_flops(report: dict) -> None:
    """SFT, reward and DPO each have model FLOPs and their fraction of the measured matmul rate."""
    assert set(report["model_flops"]) == {"sft", "reward", "dpo"}
    for stage, summary in report["model_flops"].items():
        flops = report["stages"][stage]["flops"]
        assert flops["model_flops_per_step"] > 0 and flops["tokens_per_step"] > 0, stage
        assert summary["gflops_per_s"] == pytest.approx(flops["model_flops_per_s"] / 1e9)
        assert summary["fraction_of_matmul"] == pytest.approx(
            flops["model_flops_per_s"] / report["matmul"]["matmul_flops_per_s"]
        )
        assert summary["fraction_of_matmul_cpu"] > 0
    assert report["stages"]["dpo"]["flops"]["reference_flops"] > 0  # the frozen pass counts
    assert "step_fraction_of_matmul" in report["model_flops"]["dpo"]


@pytest.mark.slow
def test_smoke_run_at_the_25m_size_feeds_fixed_length_rows(project_after, monkeypatch):
    """The 25m size (a small shape under --smoke) writes its own report and workspace, every
    row the model runs is exactly 64 + 192 tokens, and the FLOPs count those rows."""
    project_copy = project_after("data_validation")
    threads = torch.get_num_threads()
    monkeypatch.chdir(project_copy)
    args = ["--smoke", "--size", "25m", "--stages", "sft,reward,dpo", "--project-dir", str(project_copy)]
    try:
        assert bench.main([*args, "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)

    reporting = project_copy / "data" / "08_reporting"
    assert not (reporting / "bench_smoke.json").exists()  # the tiny size's report is another file
    report = json.loads((reporting / "bench_25m_smoke.json").read_text())
    assert report["size"] == "25m" and report["fixed_lengths"] == {"prompt_tokens": 64, "response_tokens": 192}
    assert_model_flops(report)
    stages = report["stages"]
    for stage, rows in (("sft", stages["sft"]["rows_per_step"]), ("reward", 2 * stages["reward"]["pairs_per_step"]),
                        ("dpo", 2 * stages["dpo"]["pairs_per_step"])):
        flops = stages[stage]["flops"]
        assert flops["trained_rows_per_step"] == rows, stage  # one row a reply: no two pairs share a prompt
        assert flops["trained_row_tokens"] == 256, stage
    shape = stages["sft"]["flops"]["model"]
    tokens = stages["sft"]["flops"]["tokens_per_step"]
    attention = 4 * shape["layers"] * shape["attention_width"] * 256 * tokens  # T^2 per row = 256 x tokens
    assert stages["sft"]["flops"]["model_flops_per_step"] == 3 * (2 * shape["matmul_parameters"] * tokens + attention)

    workload = json.loads((project_copy / "data" / "06_models" / "bench_25m_smoke" / "workload.json").read_text())
    assert workload["size"] == "25m" and workload["prompt_tokens"] == 64 and workload["response_tokens"] == 192
    assert workload["model"] == report["model"] and workload["max_length"] == 256
    assert workload["ppo"]["max_new_tokens"] == 192


def test_sizes_the_makefile_loops_over(capsys):
    def sized(out: str) -> list[str]:  # the lines the Makefile reads (importing kedro may log to stdout)
        return [line for line in out.splitlines() if line.startswith("bench-size: ")]

    assert bench.main(["--list-sizes"]) == 0
    assert sized(capsys.readouterr().out) == ["bench-size: tiny", "bench-size: 25m"]
    assert bench.main(["--list-sizes", "--size", "25m"]) == 0
    assert sized(capsys.readouterr().out) == ["bench-size: 25m"]
    with pytest.raises(SystemExit):
        bench.main(["--list-sizes", "--size", "huge"])


def test_trl_figures_become_speedups_only_for_the_same_workload(tmp_path):
    ours = {
        "rm_pairs_per_s": 30.0,
        "dpo_pairs_per_s": 12.0,
        "ppo_episodes_per_s": 4.0,
        "per_cpu_s": {"rm_pairs_per_cpu_s": 60.0, "dpo_pairs_per_cpu_s": 24.0},
        "workload_sha": "abc",
    }
    trl = {
        "reward": {"rm_pairs_per_s": 10.0, "rm_pairs_per_cpu_s": 20.0, "workload_sha": "abc"},
        "dpo": {"dpo_pairs_per_s": 6.0, "dpo_pairs_per_cpu_s": 8.0, "workload_sha": "abc"},
        "ppo": {"ppo_episodes_per_s": 1.0, "ppo_generation_tokens_per_s": 50.0, "workload_sha": "abc"},
    }
    path = tmp_path / "bench_trl.json"
    path.write_text(json.dumps(trl))

    merged = bench.merge_trl(dict(ours), path)
    assert merged["speedup"] == {"rm_pairs_per_s": 3.0, "dpo_pairs_per_s": 2.0, "ppo_episodes_per_s": 4.0}
    assert merged["speedup_cpu"] == {"rm_pairs_per_cpu_s": 3.0, "dpo_pairs_per_cpu_s": 3.0}
    assert merged["trl"] == trl and "trl_note" not in merged and "speedup_skipped" not in merged

    # DPO's TRL figures are from another workload: no DPO ratio, wall or CPU; the others stay
    trl["dpo"]["workload_sha"] = "other"
    path.write_text(json.dumps(trl))
    merged = bench.merge_trl(dict(ours), path)
    assert merged["speedup"] == {"rm_pairs_per_s": 3.0, "ppo_episodes_per_s": 4.0}
    assert merged["speedup_cpu"] == {"rm_pairs_per_cpu_s": 3.0}
    assert set(merged["speedup_skipped"]) == {"dpo"} and "other" in merged["speedup_skipped"]["dpo"]
    assert "dpo" in merged["trl_note"]
    assert merged["trl"] == trl  # TRL's figures stay readable, only the ratio goes

    # a TRL stage with no hash, or a report with none, is not the same workload either
    del trl["ppo"]["workload_sha"]
    path.write_text(json.dumps(trl))
    assert bench.merge_trl(dict(ours), path)["speedup"] == {"rm_pairs_per_s": 3.0}
    assert bench.merge_trl({k: v for k, v in ours.items() if k != "workload_sha"}, path)["speedup"] == {}

    assert "make bench-trl" in bench.merge_trl(dict(ours), tmp_path / "missing.json")["trl_note"]


def test_trl_model_flops_become_a_fraction_of_our_matmul_rate_for_the_same_workload(tmp_path):
    ours = {
        "rm_pairs_per_s": 30.0,
        "dpo_pairs_per_s": 12.0,
        "workload_sha": "abc",
        "matmul": {"matmul_flops_per_s": 1e11, "matmul_flops_per_cpu_s": 5e10},
        "model_flops": {"reward": {"gflops_per_s": 40.0}, "dpo": {"gflops_per_s": 20.0}},
    }
    flops = {"model_flops_per_s": 2e10, "model_flops_per_cpu_s": 1e10}
    trl = {
        "reward": {"rm_pairs_per_s": 10.0, "workload_sha": "abc", "flops": flops},
        "dpo": {"dpo_pairs_per_s": 6.0, "workload_sha": "other", "flops": flops},
    }
    path = tmp_path / "bench_trl.json"
    path.write_text(json.dumps(trl))

    merged = bench.merge_trl(json.loads(json.dumps(ours)), path)
    reward = merged["model_flops"]["reward"]
    assert reward["trl_gflops_per_s"] == pytest.approx(20.0)
    assert reward["trl_fraction_of_matmul"] == pytest.approx(0.2)
    assert reward["trl_fraction_of_matmul_cpu"] == pytest.approx(0.2)
    assert merged["model_flops"]["dpo"] == {"gflops_per_s": 20.0}  # another workload: no TRL fraction


def test_merge_only_says_which_stages_have_no_speedup_and_why(tmp_path, capsys):
    out, trl_path = tmp_path / "bench.json", tmp_path / "bench_trl.json"
    out.write_text(json.dumps({"rm_pairs_per_s": 30.0, "dpo_pairs_per_s": 12.0, "workload_sha": "abc"}))
    trl_path.write_text(
        json.dumps(
            {
                "reward": {"rm_pairs_per_s": 10.0, "workload_sha": "abc"},
                "dpo": {"dpo_pairs_per_s": 6.0, "workload_sha": "other"},
            }
        )
    )
    assert bench.main(["--merge-only", "--out", str(out), "--trl-results", str(trl_path)]) == 0

    assert json.loads(out.read_text())["speedup"] == {"rm_pairs_per_s": 3.0}
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bench: no ")]
    assert len(lines) == 2, lines
    dpo, ppo = sorted(lines)
    assert dpo.startswith("bench: no dpo speedup") and "other" in dpo and "abc" in dpo
    assert ppo.startswith("bench: no ppo speedup") and "TRL has no figures" in ppo
