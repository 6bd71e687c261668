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

    workspace = project_copy / "data" / "06_models" / "bench_smoke"
    workload = json.loads((workspace / "workload.json").read_text())
    assert {"reward", "dpo", "ppo"} <= set(workload) and workload["threads"] == 1
    assert (workspace / "policy" / "config.json").is_file()
    assert (workspace / "reward_model" / "config.json").is_file()  # TRL's PPO scores with our reward model
    assert (workspace / "tokenizer" / "tokenizer_config.json").is_file()
    pair = json.loads((workspace / "pairs.jsonl").read_text().splitlines()[0])
    assert set(pair) == {"prompt", "chosen", "rejected"}


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
