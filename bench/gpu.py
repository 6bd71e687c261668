"""Our SFT, DPO and PPO loops in bf16 on the GPU(s) → ``data/08_reporting/bench_gpu.json``.

A GPT-2-small-class Llama built from scratch (``FULL``: 134M parameters, 110M of them in
matmuls) trains on synthetic text cut to 512-token rows, so every row holds the same
number of tokens and a step's FLOPs are known. Each stage calls the loop its Kedro node
calls (``alignops.training``) under a ``StepClock`` (``bench/ours.py``): the clock runs
from the end of the warm-up steps to the end of the last step. Figures per stage:
tokens/s and model FLOPs utilisation (SFT, DPO), episodes/s and sampled tokens/s (PPO),
peak GPU memory. First on one GPU; with several visible, the same stages again on all
of them under ``torchrun`` (one rank per GPU, DDP through accelerate), with each
figure's scaling efficiency. bench/GPU.md has the formulas.

    python bench/gpu.py                 # needs CUDA
    python bench/gpu.py --smoke         # a tiny model, CPU allowed: proves the script runs end to end
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/gpu.py` puts bench/, not the project, on the path
    sys.path.insert(0, str(ROOT))
for name, value in {"KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
    os.environ.setdefault(name, value)

import accelerate  # noqa: E402  (after the offline switches)
import torch  # noqa: E402
import transformers  # noqa: E402

from alignops.models import ModelConfig, build_causal_lm, load_tokenizer  # noqa: E402
from alignops.models.generation import GenerationConfig  # noqa: E402
from alignops.models.reward import RewardModel, reward_head_from_causal_lm  # noqa: E402
from alignops.models.tokenizer import train_bpe_tokenizer  # noqa: E402
from alignops.training.accelerator import make_accelerator  # noqa: E402
from alignops.training.dpo import PreferencePairs, reference_logprobs, tokenize_pairs, train_dpo  # noqa: E402
from alignops.training.dpo_config import DPOConfig  # noqa: E402
from alignops.training.ppo import train_ppo  # noqa: E402
from alignops.training.ppo_config import PPOConfig  # noqa: E402
from alignops.training.sft import train_sft  # noqa: E402
from alignops.training.sft_config import SFTConfig  # noqa: E402
from bench.ours import StepClock, make_config, model_shape  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Workload:
    """The model, the row lengths and the sizes every stage runs with."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    """Of the BPE trained on the synthetic words; it reaches this size (the report has the size it reached)."""
    prompt_tokens: int
    response_tokens: int
    """Every SFT/DPO row is prompt + response tokens: the texts run past both limits, and the
    loops keep a prompt's last and a response's first tokens (a cut response gets no EOS)."""
    ppo_new_tokens: int
    """Sampled tokens per episode: an untrained policy of this vocabulary almost never samples EOS."""
    sft_batch: int
    """Rows per step and process."""
    dpo_batch: int
    """Pairs per step and process: 2x this many rows, all distinct."""
    ppo_rollout: int
    """Episodes per iteration and process."""
    ppo_minibatch: int
    warmup: int
    """Untimed steps (SFT, DPO) first; then ``steps`` timed ones."""
    steps: int
    ppo_warmup: int
    ppo_steps: int


FULL = Workload(768, 12, 12, 2048, 32000, 128, 384, 128, 32, 16, 64, 16, 5, 50, 1, 5)
"""Llama-shaped (SwiGLU, untied embeddings like Llama's), 512-token rows."""
SMOKE = Workload(32, 2, 2, 64, 320, 8, 24, 8, 4, 2, 4, 2, 1, 2, 1, 2)
PEAK_BF16_FLOPS = (  # dense bf16 tensor-core FLOP/s from the vendor's datasheet; first match of the name wins
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("GH200", 989e12),
    ("H100", 989e12), ("H200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
)


def peak_flops(device_name: str, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "from --peak-tflops"
    for part, flops in PEAK_BF16_FLOPS:
        if part in device_name:
            return flops, f"dense bf16 datasheet figure for {part}"
    return None, f"{device_name!r} is not in bench/gpu.py's PEAK_BF16_FLOPS: pass --peak-tflops for an MFU"


# ---------------------------------------------------------------------------------------
# Synthetic text, tokenizer and model


def words(rng: random.Random, lexicon: list[str], n: int) -> str:
    return " ".join(rng.choices(lexicon, k=n))


def make_lexicon(w: Workload) -> list[str]:
    """Random lowercase words, as many as the vocabulary: the BPE merges run out of pairs
    before they run out of words, so it reaches ``w.vocab_size``."""
    rng = random.Random(0)
    return ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(w.vocab_size)]


def make_tokenizer(w: Workload, lexicon: list[str]) -> Any:
    """A byte-level BPE of ``w.vocab_size`` (the project's scratch tokenizer) trained on the lexicon, twice."""
    corpus = [" ".join(lexicon[i : i + 100]) for i in range(0, len(lexicon), 100)] * 2
    return train_bpe_tokenizer(corpus, w.vocab_size, 2, model_max_length=10**6)


def model_config(w: Workload) -> ModelConfig:
    return ModelConfig(
        vocab_size=w.vocab_size, hidden_size=w.hidden_size, num_layers=w.num_layers, num_heads=w.num_heads,
        intermediate_size=w.intermediate_size, tie_word_embeddings=False,
        max_position_embeddings=w.prompt_tokens + w.response_tokens,
        max_prompt_tokens=w.prompt_tokens, max_response_tokens=w.response_tokens,
    )


def flops_per_token(model: torch.nn.Module, row_tokens: int) -> dict[str, int]:
    """Model FLOPs a token costs in a full row of ``row_tokens``, as ``make bench`` counts them
    (bench/README.md, Model FLOPs): a forward 2N + 4·L·d·T (N matmul parameters, attention's
    scores and mixing with no causal discount), a trained one 3x that (forward + backward)."""
    shape = model_shape(model)
    forward = 2 * shape["matmul_parameters"] + 4 * shape["layers"] * shape["attention_width"] * row_tokens
    return {"forward": forward, "trained": 3 * forward, **shape}


# ---------------------------------------------------------------------------------------
# Stages


GPU = int(os.environ.get("LOCAL_RANK", "0"))
"""This process's GPU: accelerate gives rank r of a torchrun launch cuda:r."""


def reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(GPU)


def peak_memory() -> dict[str, float | None]:
    """The stage's peak of tensor memory (what the allocator handed out) and of what it held from the driver."""
    cuda = torch.cuda.is_available()
    return {
        "peak_memory_gib": torch.cuda.max_memory_allocated(GPU) / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(GPU) / 2**30 if cuda else None,
    }


def timed(clock: StepClock, warmup: int, tokens_per_step: int) -> dict:
    """Tokens/s over the timed steps. Every row is full (``row_tokens``, no padding), so a step
    is ``tokens_per_step`` tokens; the loops sync with the host when they log, every step."""
    window = clock.window(warmup)
    step_s = window.seconds / len(window.steps)
    return {"tokens_per_s": tokens_per_step / step_s, "tokens_per_step": tokens_per_step, "step_s": step_s}


def run_sft(w: Workload, tokenizer, texts: dict, config: ModelConfig, common: dict, row_tokens: int) -> dict:
    sft = make_config(SFTConfig, {**common, "batch_size": w.sft_batch, "eval_fraction": 0.0,
                                  "learning_rate": 3e-4}, w.warmup + w.steps)
    clock = StepClock()
    train_sft(tokenizer, texts["prompts"], texts["responses"], config, sft, clock)
    return timed(clock, w.warmup, w.sft_batch * texts["processes"] * row_tokens)


def run_dpo(w: Workload, tokenizer, texts: dict, config: ModelConfig, common: dict, policy, row_tokens: int) -> dict:
    dpo = make_config(DPOConfig, {**common, "batch_size": w.dpo_batch, "ref_batch_size": w.dpo_batch,
                                  "learning_rate": 1e-5}, w.warmup + w.steps)
    pairs = PreferencePairs(texts["pair_prompts"], texts["chosen"], texts["rejected"])
    clock = StepClock()
    train_dpo(policy, tokenizer, pairs, None, config, dpo, clock)
    figures = timed(clock, w.warmup, 2 * w.dpo_batch * texts["processes"] * row_tokens)  # chosen + rejected rows
    figures["pairs_per_s"] = figures["tokens_per_s"] / (2 * row_tokens)
    # the loop's own clock from its start to its first step: copying the model, tokenising, the reference pass
    figures["loop_setup_s"] = clock.metric(0, "dpo/reference_s")
    tokens, seconds = reference_pass(policy, tokenizer, pairs, config, common["mixed_precision"], dpo.ref_batch_size)
    figures["reference_tokens_per_s"] = tokens / seconds
    # an epoch's rate: each token costs its share of a step and of the reference pass
    figures["with_reference_tokens_per_s"] = 1 / (1 / figures["tokens_per_s"] + seconds / tokens)
    return figures


REFERENCE_PASSES = 3


def reference_pass(policy, tokenizer, pairs: PreferencePairs, config: ModelConfig, precision: str,
                   batch_size: int) -> tuple[int, float]:
    """(tokens, seconds) of DPO's reference pass over ``pairs`` (``reference_logprobs``, as
    ``train_dpo`` calls it, shared out between the ranks), timed on its own, ``REFERENCE_PASSES``
    times over: one is a fraction of a second on a GPU. The GPU is warm from the DPO steps."""
    accelerator = make_accelerator(precision)
    model = accelerator.unwrap_model(accelerator.prepare(copy.deepcopy(policy)))  # autocast forward, no DDP
    rows = tokenize_pairs(tokenizer, pairs, config)
    shard = (accelerator.process_index, accelerator.num_processes)
    gather = None
    if accelerator.num_processes > 1:
        gather = lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()  # noqa: E731
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    for _ in range(REFERENCE_PASSES):  # each batch's log-probs come back to the CPU: the clock waits for the GPU
        reference_logprobs(model, rows, 2 * batch_size, False, accelerator.device, shard, gather)
    seconds = time.perf_counter() - started
    del model
    accelerator.free_memory()
    return REFERENCE_PASSES * int(rows["attention_mask"].sum()), seconds


def run_ppo(w: Workload, tokenizer, texts: dict, config: ModelConfig, common: dict, policy, reward) -> dict:
    ppo = make_config(PPOConfig, {**common, "rollout_batch_size": w.ppo_rollout, "minibatch_size": w.ppo_minibatch,
                                  "max_new_tokens": w.ppo_new_tokens, "generation_batch_size": w.ppo_rollout,
                                  "reward_batch_size": w.ppo_rollout, "num_samples": 0, "snapshot_every": 0},
                      w.ppo_warmup + w.ppo_steps)
    clock = StepClock()
    train_ppo(policy, tokenizer, reward, texts["ppo_prompts"], config, ppo, GenerationConfig(), clock)
    window = clock.window(w.ppo_warmup)
    per_rank, processes = ppo.rollout_batch_size, texts["processes"]
    lengths = [clock.metric(s, "ppo/mean_response_length") for s in window.steps]
    # the loop's rate is rank 0's sampled tokens over rank 0's sampling time; the ranks sample side by side
    rates = [clock.metric(s, "ppo/generation_tokens_per_s") for s in window.steps]
    sampling_s = [n * per_rank / rate for n, rate in zip(lengths, rates, strict=True)]
    sampled = sum(lengths) * per_rank * processes
    return {
        "episodes_per_s": per_rank * processes * len(window.steps) / window.seconds,
        "generation_tokens_per_s": sampled / sum(sampling_s), "mean_response_tokens": sum(lengths) / len(lengths),
        "generation_share": sum(sampling_s) / window.seconds, "iteration_s": window.seconds / len(window.steps),
    }


def synthetic_texts(w: Workload, lexicon: list[str], processes: int) -> dict:
    """Rows whose prompts and responses run past the limits (a word is at least one token)."""
    rng = random.Random(1)
    n_sft, n_pairs, n_prompts = (8 * size * processes for size in (w.sft_batch, w.dpo_batch, w.ppo_rollout))
    prompt, response = w.prompt_tokens + 8, w.response_tokens + 8
    return {
        "processes": processes,
        "prompts": [words(rng, lexicon, prompt) for _ in range(n_sft)],
        "responses": [words(rng, lexicon, response) for _ in range(n_sft)],
        "pair_prompts": [words(rng, lexicon, prompt) for _ in range(n_pairs)],
        "chosen": [words(rng, lexicon, response) for _ in range(n_pairs)],
        "rejected": [words(rng, lexicon, response) for _ in range(n_pairs)],
        "ppo_prompts": [words(rng, lexicon, prompt) for _ in range(n_prompts)],
    }


def full_rows(tokenizer, texts: dict, config: ModelConfig, n: int = 16) -> int:
    """The tokens of every row, ``config.max_length``, checked on the first ``n`` pairs as the loops tokenise them."""
    pairs = PreferencePairs(texts["pair_prompts"][:n], texts["chosen"][:n], texts["rejected"][:n])
    lengths = tokenize_pairs(tokenizer, pairs, config)["attention_mask"].sum(1)
    if not bool((lengths == config.max_length).all()):
        raise RuntimeError(f"rows of {lengths.unique().tolist()} tokens, not all {config.max_length}: texts too short")
    return config.max_length


def run_stages(w: Workload, tokenizer, lexicon: list[str], precision: str, processes: int,
               peak: float | None) -> dict:
    """Every stage in this process (one rank of several under torchrun); figures and MFU."""
    config = model_config(w)
    texts = synthetic_texts(w, lexicon, processes)
    row_tokens = full_rows(tokenizer, texts, config)
    torch.manual_seed(0)
    base = build_causal_lm(config, tokenizer)  # the untrained policy DPO and PPO start from, on the CPU
    flops = flops_per_token(base, row_tokens)
    common = {"mixed_precision": precision, "resume": "never"}
    stages: dict[str, dict] = {}

    def mfu_of(flops_per_s: float) -> float | None:
        return None if peak is None else flops_per_s / (peak * processes)

    reset_memory()
    sft = stages["sft"] = run_sft(w, tokenizer, texts, config, common, row_tokens) | peak_memory()
    sft["model_flops_per_s"] = flops["trained"] * sft["tokens_per_s"]
    reset_memory()
    dpo = stages["dpo"] = run_dpo(w, tokenizer, texts, config, common, base, row_tokens) | peak_memory()
    dpo["model_flops_per_s"] = flops["trained"] * dpo["tokens_per_s"]  # the steps: the policy alone
    dpo["reference_mfu"] = mfu_of(flops["forward"] * dpo["reference_tokens_per_s"])
    dpo["with_reference_mfu"] = mfu_of((flops["trained"] + flops["forward"]) * dpo["with_reference_tokens_per_s"])
    reset_memory()
    torch.manual_seed(0)
    reward = RewardModel(reward_head_from_causal_lm(base), tokenizer, config.prompt_template, config.response_prefix,
                         config.max_prompt_tokens, config.max_response_tokens)
    stages["ppo"] = run_ppo(w, tokenizer, texts, config, common, base, reward) | peak_memory()
    for stage in ("sft", "dpo"):
        stages[stage]["mfu"] = mfu_of(stages[stage]["model_flops_per_s"])
    return {"processes": processes, "flops_per_token": flops, "row_tokens": row_tokens, "stages": stages}


# ---------------------------------------------------------------------------------------
# Several GPUs: this script again under torchrun, one rank per GPU

SCALED = {"sft": ("tokens_per_s",), "dpo": ("tokens_per_s", "pairs_per_s"),
          "ppo": ("episodes_per_s", "generation_tokens_per_s")}


def launch_ranks(argv: list[str], processes: int, tokenizer, folder: Path) -> dict:
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    out = folder / "ranks.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(Path(__file__).resolve()), *argv, "--rank-of", str(folder)]
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes)), **os.environ}
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # gloo ranks on the CPU (the smoke check of this path)
    print(f"bench-gpu: {processes} processes: {' '.join(command)}", file=sys.stderr, flush=True)
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text())


def scaling(single: dict, multi: dict) -> dict:
    """Aggregate figure / (processes x the one-process figure), per stage and figure."""
    n = multi["processes"]
    return {stage: {k: multi["stages"][stage][k] / (n * single["stages"][stage][k]) for k in keys}
            for stage, keys in SCALED.items()}


def table(report: dict) -> str:
    lines = [f"{'stage':<6}{'procs':>6}  {'figure':<26}{'value':>14}{'MFU':>8}{'peak GiB':>10}"]
    for run in report["runs"]:
        for stage, keys in SCALED.items():
            figures = run["stages"][stage]
            mfu = figures.get("mfu")
            memory = figures["peak_memory_gib"]
            for i, key in enumerate(keys):
                lines.append(f"{stage:<6}{run['processes']:>6}  {key:<26}{figures[key]:>14,.1f}"
                             f"{(f'{mfu:.1%}' if mfu is not None and i == 0 else '-'):>8}"
                             f"{(f'{memory:.2f}' if memory is not None and i == 0 else '-'):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 1 + 2 steps a stage, CPU allowed")
    parser.add_argument("--out", type=Path, help="default data/08_reporting/bench_gpu[_smoke].json")
    parser.add_argument("--processes", type=int, help="processes of the second pass (default: every visible GPU; "
                        "1 skips it; with --smoke on CPU, gloo ranks)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for a device not in the table")
    parser.add_argument("--rank-of", type=Path, help=argparse.SUPPRESS)  # a rank of the second pass: its folder
    args = parser.parse_args(argv)
    w = SMOKE if args.smoke else FULL
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit(f"bench-gpu: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                 "run it on a machine with an NVIDIA GPU, or pass --smoke for the CPU check of the script")
    transformers.logging.set_verbosity_error()
    precision = "bf16" if cuda else "no"  # CPU (smoke only): fp32, bf16 there is slow and proves nothing
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak, peak_note = peak_flops(name, args.peak_tflops) if cuda else (None, "no GPU: no MFU on the CPU")
    if cuda and (args.processes or 1) > torch.cuda.device_count():
        parser.error(f"--processes {args.processes}: this machine has {torch.cuda.device_count()} GPU(s)")
    if args.rank_of is not None:
        lexicon = make_lexicon(w)
        tokenizer = load_tokenizer(str(args.rank_of / "tokenizer"))
        run = run_stages(w, tokenizer, lexicon, precision, int(os.environ["WORLD_SIZE"]), peak)
        if int(os.environ["RANK"]) == 0:
            (args.rank_of / "ranks.json").write_text(json.dumps(run))
        return 0

    started = time.perf_counter()
    lexicon = make_lexicon(w)
    tokenizer = make_tokenizer(w, lexicon)
    runs = [run_stages(w, tokenizer, lexicon, precision, 1, peak)]
    report = {
        "device": name, "device_count": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "python": platform.python_version(), "smoke": args.smoke,
        "precision": precision, "peak_flops": peak, "peak_flops_note": peak_note,
        "model": {**dataclasses.asdict(model_config(w)), "vocab_size": len(tokenizer)},
        "flops_per_token": runs[0]["flops_per_token"], "workload": dataclasses.asdict(w),
        "row_tokens": runs[0]["row_tokens"], "runs": runs,
        "scaling_efficiency": None,
    }
    out = args.out or ROOT / f"data/08_reporting/bench_gpu{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")  # the one-GPU figures, whatever the next pass does
    processes = args.processes or (torch.cuda.device_count() if cuda else 1)
    if processes > 1:
        reset_memory()
        try:
            with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
                runs.append(launch_ranks(argv, processes, tokenizer, Path(folder)))
            report["scaling_efficiency"] = scaling(runs[0], runs[1])
        except subprocess.CalledProcessError as error:
            report["multi_process_error"] = f"the {processes}-process pass failed (exit status {error.returncode})"
    report["wall_s"] = time.perf_counter() - started
    out.write_text(json.dumps(report, indent=2) + "\n")
    flops = report["flops_per_token"]
    print(f"bench-gpu: {name}, {flops['parameters']:,} parameters ({flops['matmul_parameters']:,} in matmuls), "
          f"{precision}, rows of {report['row_tokens']} tokens, {flops['trained']:,} FLOPs a trained token")
    print(table(report))
    print(f"bench-gpu: wrote {out}")
    if "multi_process_error" in report:
        print(f"bench-gpu: {report['multi_process_error']}; its output is above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
