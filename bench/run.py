"""Throughput of alignops' training loops on the default configuration → ``data/08_reporting/bench.json``.

Each stage calls the loop its Kedro node calls (``alignops.training``), with the
stage's configuration from ``conf/<env>/parameters_<stage>.yml`` and only these
changes: the step count is capped at ``warmup + steps``, metrics are logged every
step (the timestamps are the clock), and held-out evaluation, sample saving and
checkpoints are pushed past the last step. Throughput counts the steps after the
warm-up only, so model building, tokenisation and the first (slow) steps are out.

It also writes the workspace ``bench/trl_baseline.py`` reads, so TRL runs on the
same model, tokenizer, data and sizes: ``workload.json`` (every number TRL needs),
``tokenizer/``, ``policy/``, ``pairs.jsonl`` and ``prompts.jsonl``. When TRL's
results (``make bench-trl``) exist, ``bench.json`` gets them under ``trl``, and our/TRL
ratios under ``speedup`` for each stage TRL ran on the same workload (its hash); the
other stages get no ratio, and ``speedup_skipped`` and the console say why.

    python bench/run.py                  # all stages, both sizes (tiny, then 25m), each in its own process
    python bench/run.py --size 25m       # one size: a 25M-parameter Llama on 64 + 192-token rows
    python bench/run.py --stages ppo     # one stage
    python bench/run.py --export-only    # the workspace for TRL, nothing timed
    python bench/run.py --merge-only     # re-read TRL's results into bench.json
    python bench/run.py --smoke          # conf/test sizes, two steps a stage (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the project, on the path
    sys.path.insert(0, str(ROOT))
for name, value in {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ.setdefault(name, value)

import accelerate  # noqa: E402  (after the offline switches)
import torch  # noqa: E402
import transformers  # noqa: E402

from alignops.models.loading import load_model, save_model  # noqa: E402
from alignops.models.tokenizer import load_tokenizer  # noqa: E402
from bench.ours import (  # noqa: E402
    SIZES,
    Size,
    apply_size,
    bench_dpo,
    bench_ppo,
    bench_reward,
    bench_sft,
    load_inputs,
    matmul_flops,
    model_shape,
    peak_rss_mb,
    scratch_tokenizer,
    trained_policy,
    untrained_policy,
)
from bench.workspace import build_workload, write_workspace  # noqa: E402

STAGES = ("sft", "reward", "ppo", "dpo")
DEFAULT_STEPS = {"sft": 20, "reward": 20, "ppo": 12, "dpo": 20}
"""Timed steps after the warm-up: optimiser steps, or PPO iterations (each a rollout of
``rollout_batch_size`` episodes and ``ppo_epochs x minibatches`` optimiser steps)."""
SMOKE_STEPS = {stage: 2 for stage in STAGES}
DEFAULT_SIZES = ("tiny", "25m")
"""What ``make bench`` runs: the default configuration, then the 25M-parameter model (bench/ours.py SIZES)."""
SMOKE_SHAPE = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
"""``--smoke --size 25m``: the fixed-length rows and batch sizes, on a model small enough for a test."""
FLOPS_STAGES = ("sft", "reward", "dpo")
SMOKE_ROWS = 128
"""Demonstrations and preference pairs a smoke run reads (the first ones): enough for two steps."""
TRL_METRICS = {
    "rm_pairs_per_s": "reward",
    "dpo_pairs_per_s": "dpo",
    "ppo_episodes_per_s": "ppo",
    "ppo_generation_tokens_per_s": "ppo",
    "ppo_response_tokens_per_s": "ppo",  # episodes/s weighted by reply length: the sides sample apart
}
CPU_METRICS = {"rm_pairs_per_cpu_s": "reward", "dpo_pairs_per_cpu_s": "dpo", "ppo_episodes_per_cpu_s": "ppo"}
"""The same work per second of the process's CPU time: on a busy machine the wall clock
mostly measures the neighbours; with one thread, CPU time is close to a quiet machine's."""
TARGET_SPEEDUP = 2.0
HEADLINE = (
    "sft_tokens_per_s",
    "rm_pairs_per_s",
    "ppo_episodes_per_s",
    "ppo_generation_tokens_per_s",
    "dpo_pairs_per_s",
)
"""The headline figures, at the top level of bench.json; ``stages`` has the rest."""


# ---------------------------------------------------------------------------------------
# Report


def merge_trl(report: dict, trl_path: Path) -> dict:
    """Add TRL's figures, and our/TRL ratios for the stages TRL ran on our workload.

    A ratio between two workloads measures the difference between the workloads, so a
    stage whose TRL figures carry another workload hash (or none) gets no ratio at all;
    ``speedup_skipped`` says, per stage, why it has none.
    """
    for key in ("trl", "speedup", "speedup_cpu", "speedup_skipped", "trl_note"):
        report.pop(key, None)
    if not trl_path.is_file():
        report["trl_note"] = f"no {trl_path}: run `make bench-trl` for TRL's figures and the speedups"
        return report
    trl = json.loads(trl_path.read_text())
    report["trl"] = trl
    ours_sha = report.get("workload_sha")
    stages = report.get("stages", {})
    ours = {metric: report.get(metric, stages.get(stage, {}).get(metric)) for metric, stage in TRL_METRICS.items()}
    ours_cpu = report.get("per_cpu_s", {})
    skipped, stale = {}, []
    for stage in sorted(set(TRL_METRICS.values())):
        if stage not in trl:
            skipped[stage] = "TRL has no figures for it (run `make bench-trl`)"
        elif ours_sha is None or trl[stage].get("workload_sha") != ours_sha:
            stale.append(stage)
            skipped[stage] = (
                f"TRL's figures are for workload {trl[stage].get('workload_sha')}, ours for {ours_sha}"
                " (run `make bench-trl` with the same BENCH_ARGS)"
            )
        elif all(ours[metric] is None for metric, of in TRL_METRICS.items() if of == stage):
            skipped[stage] = "no figures of ours for it (run `make bench` for this stage)"
    comparable = {stage for stage in trl if stage not in skipped}
    report["speedup"] = {
        metric: ours[metric] / trl[stage][metric]
        for metric, stage in TRL_METRICS.items()
        if stage in comparable and ours[metric] is not None and metric in trl[stage]
    }
    report["speedup_cpu"] = {
        metric: ours_cpu[metric] / trl[stage][metric]
        for metric, stage in CPU_METRICS.items()
        if stage in comparable and metric in ours_cpu and metric in trl[stage]
    }
    report["speedup_target"] = TARGET_SPEEDUP
    matmul = report.get("matmul", {})
    for stage, summary in report.get("model_flops", {}).items():
        for key in ("trl_gflops_per_s", "trl_fraction_of_matmul", "trl_fraction_of_matmul_cpu"):
            summary.pop(key, None)
        flops = trl.get(stage, {}).get("flops")
        if stage in comparable and flops and matmul:
            summary["trl_gflops_per_s"] = flops["model_flops_per_s"] / 1e9
            summary["trl_fraction_of_matmul"] = flops["model_flops_per_s"] / matmul["matmul_flops_per_s"]
            summary["trl_fraction_of_matmul_cpu"] = flops["model_flops_per_cpu_s"] / matmul["matmul_flops_per_cpu_s"]
    if skipped:
        report["speedup_skipped"] = skipped
    if stale:
        report["trl_note"] = f"TRL ran on another workload for {stale}: rerun `make bench-trl`"
    return report


def say_skipped(report: dict) -> None:
    """One console line per stage without a speedup, and why: a JSON key is easy to miss."""
    for stage, why in report.get("speedup_skipped", {}).items():
        print(f"bench: no {stage} speedup: {why}", file=sys.stderr)


def model_flops_summary(stages: dict[str, dict], matmul: dict) -> dict[str, dict]:
    """Per SFT, reward and DPO stage: model GFLOP/s and their fraction of this CPU's matmul rate
    (wall clock, and per CPU second on both sides: what a quiet machine would see)."""
    summary = {}
    for stage in FLOPS_STAGES:
        flops = stages.get(stage, {}).get("flops")
        if not flops:
            continue
        summary[stage] = {
            "gflops_per_s": flops["model_flops_per_s"] / 1e9,
            "fraction_of_matmul": flops["model_flops_per_s"] / matmul["matmul_flops_per_s"],
            "fraction_of_matmul_cpu": flops["model_flops_per_cpu_s"] / matmul["matmul_flops_per_cpu_s"],
            "tokens_per_step": flops["tokens_per_step"],
            "matmul_parameters": flops["model"]["matmul_parameters"],
        }
        if "step_model_flops_per_s" in flops:  # DPO: the steps alone, without the reference pass
            summary[stage]["step_fraction_of_matmul"] = flops["step_model_flops_per_s"] / matmul["matmul_flops_per_s"]
    return summary


def size_paths(project: Path, size: str, smoke: bool) -> dict[str, Path]:
    """Each size's own workspace and reports: ``tiny`` keeps the original names."""
    suffix = ("" if size == "tiny" else f"_{size}") + ("_smoke" if smoke else "")
    return {
        "workspace": project / f"data/06_models/bench{suffix}",
        "out": project / f"data/08_reporting/bench{suffix}.json",
        "trl_results": project / f"data/08_reporting/bench_trl{suffix.removesuffix('_smoke')}.json",
    }


def size_spec(size: str, smoke: bool) -> Size | None:
    spec = SIZES[size]
    if spec is None or not smoke:
        return spec
    return dataclasses.replace(spec, model={**spec.model, **SMOKE_SHAPE}, steps=dict(SMOKE_STEPS), warmup=1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project-dir", type=Path, default=ROOT, help="the Kedro project (conf/ and data/)")
    parser.add_argument("--env", default="local", help="Kedro environment whose parameters to use (base + env)")
    parser.add_argument(
        "--size",
        help=f"comma-separated model sizes of {','.join(SIZES)} (default {','.join(DEFAULT_SIZES)}; tiny with"
        " --smoke, --workspace, --out or --trl-results)",
    )
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--steps", type=int, help="timed steps for every stage (default: per stage)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 with --smoke)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--policy", type=Path, help="a trained SFT model folder for PPO/DPO (default: the catalog's)")
    parser.add_argument("--tokenizer", type=Path, help="its tokenizer folder (default: --policy's)")
    parser.add_argument("--fresh-policy", action="store_true", help="use the SFT this run trains, not the catalog's")
    parser.add_argument("--workspace", type=Path, help="where TRL's inputs go (default data/06_models/bench[_smoke])")
    parser.add_argument("--out", type=Path, help="the report (default data/08_reporting/bench[_smoke].json)")
    parser.add_argument("--trl-results", type=Path, help="TRL's figures (default data/08_reporting/bench_trl.json)")
    parser.add_argument("--smoke", action="store_true", help="conf/test sizes, 2 steps a stage: checks, not timings")
    parser.add_argument("--export-only", action="store_true", help="write the workspace for TRL; time nothing")
    parser.add_argument("--merge-only", action="store_true", help="only re-read TRL's results into --out")
    parser.add_argument("--list-sizes", action="store_true", help="print 'bench-size: <size>' for each size (Makefile)")
    args = parser.parse_args(argv)
    one_size = args.smoke or args.workspace or args.out or args.trl_results  # one size's files: tiny unless named
    sizes = [s for s in (args.size or ("tiny" if one_size else ",".join(DEFAULT_SIZES))).split(",") if s]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown or not sizes:
        parser.error(f"unknown sizes {unknown}; expected some of {list(SIZES)}")
    if args.list_sizes:  # a prefix of its own: importing kedro may log to stdout
        print("\n".join(f"bench-size: {size}" for size in sizes))
        return 0
    project = args.project_dir.resolve()
    if len(sizes) > 1:
        if args.workspace or args.out or args.trl_results:
            parser.error("--workspace, --out and --trl-results name one size's files: pass one --size with them")
        if args.merge_only:
            return max(main([*argv, "--size", size]) for size in sizes)
        # one process per size: each has its own peak RSS and its own torch state
        codes = [subprocess.call([sys.executable, __file__, *argv, "--size", size]) for size in sizes]
        return max(codes)
    size = sizes[0]
    spec = size_spec(size, args.smoke)
    paths = size_paths(project, size, args.smoke)  # a smoke run never overwrites the real report
    args.workspace = args.workspace or paths["workspace"]
    args.out = args.out or paths["out"]
    args.trl_results = args.trl_results or paths["trl_results"]
    for name in ("workspace", "out", "trl_results", "policy", "tokenizer"):  # before the chdir below
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())

    if args.merge_only:
        if not args.out.is_file():
            print(f"bench: no {args.out} to merge TRL's figures into (`make bench` for {size})", file=sys.stderr)
            return 0
        report = merge_trl(json.loads(args.out.read_text()), args.trl_results)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: report[k] for k in ("speedup", "speedup_skipped", "trl_note") if k in report}, indent=2))
        say_skipped(report)
        return 0

    os.chdir(project)  # the catalog's paths are relative to the project
    env = "test" if args.smoke else args.env
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; expected some of {STAGES}")
    default_warmup = spec.warmup if spec else (1 if args.smoke else 3)
    warmup = args.warmup if args.warmup is not None else default_warmup
    if warmup < 1:
        parser.error("--warmup must be >= 1: the clock starts at the end of the last warm-up step")
    default_steps = spec.steps if spec else (SMOKE_STEPS if args.smoke else DEFAULT_STEPS)
    steps = {s: args.steps or default_steps[s] for s in STAGES}
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    inputs = load_inputs(project, env, SMOKE_ROWS if args.smoke else None)
    if spec is None:
        trained = trained_policy(inputs, args.policy, args.tokenizer, fresh=args.fresh_policy or args.smoke)
        tokenizer = trained[1] if trained else scratch_tokenizer(inputs)
    else:  # the run's tokenizer (trained on the world's text), the shape from scratch, fixed-length rows
        tokenizer = scratch_tokenizer(inputs)
        inputs = apply_size(inputs, tokenizer, spec, steps, warmup)
        trained = (untrained_policy(inputs, tokenizer), tokenizer, f"untrained {size} Llama (seed 0)")
    matmul = None if args.export_only else matmul_flops(*((256, 2) if args.smoke else ()))

    report: dict[str, Any] = {}
    stage_figures: dict[str, dict] = {}
    started, load_at_start = time.perf_counter(), list(os.getloadavg())
    policy = trained[0] if trained else None
    if policy is None or ("sft" in stages and not args.export_only):
        figures, sft_model = bench_sft(inputs, tokenizer, steps["sft"], warmup)
        if "sft" in stages and not args.export_only:
            stage_figures["sft"] = figures
        policy = policy if policy is not None else sft_model
    policy_source = trained[2] if trained else f"this run's SFT ({warmup + steps['sft']} steps from scratch)"

    # the policy both sides start from is the one in the workspace, reloaded
    shape = {
        name: getattr(inputs.model_config, name)
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "tie_word_embeddings")
    } | {"vocab": len(tokenizer), "parameters": model_shape(policy)["parameters"]}
    lengths = {"prompt_tokens": spec.prompt_tokens, "response_tokens": spec.response_tokens} if spec else {}
    workload = build_workload(
        inputs, steps, warmup, args.threads, policy_source, {"size": size, "model": shape, **lengths}
    )
    workload_sha = write_workspace(args.workspace, inputs, tokenizer, policy, workload)
    policy = load_model(args.workspace / "policy", "causal_lm")
    tokenizer = load_tokenizer(str(args.workspace / "tokenizer"))

    stamps: dict[str, dict] = {}

    def stamp(stage: str) -> None:
        """When a stage finished and how loaded the machine was (1-minute load average) then."""
        stamps[stage] = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_1min": os.getloadavg()[0]}

    if "sft" in stage_figures:
        stamp("sft")
    # PPO on both sides scores with the reward model our loop trains here (TRL also starts
    # its value model from it), so both optimise the same reward.
    reward_model = None
    if {"reward", "ppo"} & set(stages) or args.export_only:
        figures, reward_model = bench_reward(inputs, tokenizer, policy, steps["reward"], warmup)
        save_model(reward_model.model, args.workspace / "reward_model")
        if "reward" in stages and not args.export_only:
            stage_figures["reward"] = figures
            stamp("reward")
    if args.export_only:
        print(f"bench: workspace {args.workspace} (workload {workload_sha})")
        return 0
    if "ppo" in stages:
        stage_figures["ppo"] = bench_ppo(inputs, tokenizer, policy, reward_model, steps["ppo"], warmup)
        stamp("ppo")
    if "dpo" in stages:
        stage_figures["dpo"] = bench_dpo(inputs, tokenizer, policy, steps["dpo"], warmup)
        stamp("dpo")
    for stage in stage_figures:
        stage_figures[stage] |= {"steps": steps[stage], **stamps.get(stage, {})}

    # A run of some stages keeps the other stages' figures from the last run on the same workload.
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    carried = previous.get("workload_sha") == workload_sha and not args.smoke
    if carried:
        stage_figures = {**previous.get("stages", {}), **stage_figures}
    for figures in stage_figures.values():
        report |= {k: v for k, v in figures.items() if k in HEADLINE}
    report["per_cpu_s"] = {k: v for f in stage_figures.values() for k, v in f.items() if k.endswith("_per_cpu_s")}
    report |= {
        "size": size,
        "model": shape,
        **({"fixed_lengths": lengths} if lengths else {}),
        "matmul": matmul,
        "matmul_gflops_per_s": matmul["matmul_flops_per_s"] / 1e9,
        "model_flops": model_flops_summary(stage_figures, matmul),
        "peak_rss_mb": max(peak_rss_mb(), previous.get("peak_rss_mb", 0.0) if carried else 0.0),
        "device": accelerate.PartialState().device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_at_start, "end": list(os.getloadavg())},  # 1, 5, 15 min
        "env": env,
        "smoke": args.smoke,
        "warmup_steps": warmup,
        "policy": policy_source,
        "workload_sha": workload_sha,
        "stages": stage_figures,
        "wall_s": time.perf_counter() - started,
    }
    report = merge_trl(report, args.trl_results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "stages"}, indent=2))
    say_skipped(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
