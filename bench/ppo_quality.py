"""PPO quality and speed on the embedded world: is the PPO policy better than SFT by the gold judge?

Loads the catalog's outputs (``sft_model``, ``ppo_model``, ``tokenizer``, ``reward_model``,
``eval_prompts``, ``gold_judge_spec``, ``ppo_history``), samples one response per
evaluation prompt from each policy with the run's sampling settings
(``params:generation``: temperature 0.7, max 160 new tokens; the same seed for both),
scores both with the gold judge and the reward model, and prints gold means, the win
rate of PPO over SFT (ties count half), the RM means, a Monte-Carlo KL(PPO ‖ SFT),
response lengths, degenerate-reply rates and PPO's timing. Reward hacking shows as
the RM mean rising while the gold mean falls. Run from the repository root after
``kedro run --pipelines data_generation,ingestion,data_validation,sft,reward,ppo``::

    python bench/ppo_quality.py                  # the catalog's ppo_model
    python bench/ppo_quality.py --retrain        # train PPO afresh in-process (timed), then measure
    python bench/ppo_quality.py --retrain --set kl_coef=0.1 --set steps=30 --seeds 0 1 2
    python bench/ppo_quality.py --retrain --reward-set epochs=2 --reward-set learning_rate=5e-4

``--reward-set`` first retrains the reward model in-process (``params:reward`` with the
overrides, on ``preferences_train``, normalised on SFT samples as the stage does), prints its
held-out gold accuracy, and gives PPO (and the RM columns) that model instead of the catalog's.
``--retrain`` does not overwrite the catalog's ``ppo_model`` (nor ``--reward-set`` its
``reward_model``). The gold judge is the evaluation's truth; it is never a training input.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

for name, value in {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ.setdefault(name, value)

from kedro.framework.session import KedroSession  # noqa: E402
from kedro.framework.startup import bootstrap_project  # noqa: E402

from alignops.evaluation.policies import EvaluationConfig, kl_to_reference, sample_policy, win_rate  # noqa: E402
from alignops.evaluation.reward import reward_model_accuracy  # noqa: E402
from alignops.models.config import ModelConfig  # noqa: E402
from alignops.models.generation import GenerationConfig  # noqa: E402
from alignops.pipelines.ppo.nodes import collect_prompts  # noqa: E402
from alignops.pipelines.reward.nodes import fit_reward_model  # noqa: E402
from alignops.training.common import MetricHistory  # noqa: E402
from alignops.training.ppo import train_ppo  # noqa: E402
from alignops.training.ppo_config import PPOConfig  # noqa: E402
from alignops.training.reward_config import RewardConfig  # noqa: E402
from alignops.world import GoldJudge  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_value(text: str):
    """A ``--set`` value as YAML, except that ``1e-5`` is a float (YAML 1.1 wants ``1.0e-5``)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def retrain(catalog, sft_model, tokenizer, reward_model, model_config: ModelConfig, overrides: dict) -> tuple:
    """Train PPO from ``sft_model`` with ``params:ppo`` (+ overrides); returns (model, history, wall s, cpu s)."""
    params = {**catalog.load("params:ppo"), **overrides}
    prompts = collect_prompts(catalog.load("preferences_train"), catalog.load("sft_demonstrations"), params)
    history = MetricHistory()
    wall, cpu = time.perf_counter(), time.process_time()
    generation = GenerationConfig(**catalog.load("params:generation"))  # PPO samples as evaluation does
    result = train_ppo(
        sft_model, tokenizer, reward_model, prompts, model_config, PPOConfig(**params), generation, history
    )
    return result.policy, history.rows, time.perf_counter() - wall, time.process_time() - cpu


def retrain_reward_model(catalog, sft_model, tokenizer, judge, model_config: ModelConfig, overrides: dict):
    """The reward stage's model trained afresh with ``params:reward`` (+ overrides); prints its gold accuracy."""
    train, heldout = catalog.load("preferences_train"), catalog.load("preferences_heldout")
    wall = time.perf_counter()
    reward_model = fit_reward_model(
        train, heldout, sft_model, tokenizer, None, model_config, GenerationConfig(**catalog.load("params:generation")),
        RewardConfig(**{**catalog.load("params:reward"), **overrides}), MetricHistory(),
        train["prompt"].astype(str).tolist(),
    )
    wall = time.perf_counter() - wall
    measured = reward_model_accuracy(heldout, reward_model.score, judge.score)
    print(f"reward model {overrides}: {wall:.1f} s, held-out gold accuracy {measured['heldout_accuracy']:.3f} "
          f"({measured['gold_pairs']} pairs)")
    return reward_model


def degenerate_share(judge: GoldJudge, prompts: list[str], texts: list[str]) -> tuple[float, float]:
    """Shares of looping replies (distinct-trigram ratio under the judge's floor) and near-empty ones."""
    features = judge.features(prompts, texts)
    looping = features["distinct_3"] < judge.weights.repetition_floor
    near_empty = features["n_words"] < judge.weights.near_empty_words
    return float(looping.mean()), float(near_empty.mean())


def measure(
    sft_model, ppo_model, tokenizer, reward_model, prompts, judge, model_config, generation, eval_config, seed
) -> dict:
    """One sampled response per prompt from each policy (same seed), scored by the gold judge and the RM."""
    sft = sample_policy(sft_model, tokenizer, prompts, model_config, generation, eval_config, seed)
    ppo = sample_policy(ppo_model, tokenizer, prompts, model_config, generation, eval_config, seed)
    gold_sft, gold_ppo = judge.score(prompts, sft.texts), judge.score(prompts, ppo.texts)
    rm_sft = reward_model.score(prompts, sft.texts, batch_size=eval_config.batch_size).numpy()
    rm_ppo = reward_model.score(prompts, ppo.texts, batch_size=eval_config.batch_size).numpy()
    looping, near_empty = degenerate_share(judge, prompts, ppo.texts)
    return {
        "gold_sft": float(np.mean(gold_sft)),
        "gold_ppo": float(np.mean(gold_ppo)),
        "win_rate": win_rate(np.asarray(gold_ppo), np.asarray(gold_sft)),
        "rm_sft": float(rm_sft.mean()),
        "rm_ppo": float(rm_ppo.mean()),
        "kl_ppo_sft": float(kl_to_reference(
            ppo_model, sft_model, ppo, generation.temperature, eval_config.batch_size
        ).mean()),
        "len_sft": float(sft.response_mask.sum(1).float().mean()),
        "len_ppo": float(ppo.response_mask.sum(1).float().mean()),
        "words_sft": float(np.mean([len(t.split()) for t in sft.texts])),
        "words_ppo": float(np.mean([len(t.split()) for t in ppo.texts])),
        "eos_ppo": float(ppo.ended_with_eos.float().mean()),
        "looping_ppo": looping,
        "near_empty_ppo": near_empty,
        "example": (prompts[0], sft.texts[0], ppo.texts[0]),
    }


def describe_run(rows: list[dict]) -> None:
    """Timing and the first/last iteration's objective, from the loop's history rows."""
    first, last = rows[0], rows[-1]
    print(
        f"PPO run: {len(rows)} iterations, {last['ppo/elapsed_s']:.1f} s in the loop, "
        f"median {np.median([r['ppo/episodes_per_s'] for r in rows]):.1f} episodes/s, "
        f"median {np.median([r['ppo/generation_tokens_per_s'] for r in rows]):.0f} generated tokens/s"
    )
    for label, row in (("first", first), ("last", last)):
        print(
            f"  {label}: RM score {row['objective/scores']:.3f}  KL {row['objective/kl']:.2f}  "
            f"rlhf reward {row['objective/rlhf_reward']:.3f}  entropy {row['objective/entropy']:.1f}  "
            f"approxkl {row['policy/approxkl']:.4f}  clipfrac {row['policy/clipfrac']:.3f}  "
            f"value EV {row['val/explained_variance']:.2f}  length {row['ppo/mean_response_length']:.1f}  "
            f"EOS {row['ppo/eos_rate']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro environment (default: the project's)")
    parser.add_argument("--retrain", action="store_true", help="train PPO afresh from sft_model and time it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override params:ppo")
    parser.add_argument(
        "--reward-set", action="append", default=[], metavar="KEY=VALUE",
        help="retrain the reward model first with params:reward overridden (repeatable)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="sampling seeds (default: evaluation's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    reward_overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.reward_set)}

    bootstrap_project(REPO_ROOT)
    with KedroSession.create(project_path=REPO_ROOT, env=args.env) as session:
        catalog = session.load_context().catalog
        model_config = ModelConfig(**catalog.load("params:model"))
        generation = GenerationConfig(**catalog.load("params:generation"))
        eval_config = EvaluationConfig(**catalog.load("params:evaluation"))
        tokenizer, sft_model = catalog.load("tokenizer"), catalog.load("sft_model")
        reward_model = catalog.load("reward_model")
        judge = GoldJudge.from_spec(catalog.load("gold_judge_spec"))
        prompts = catalog.load("eval_prompts")["prompt"].tolist()
        if args.reward_set:
            reward_model = retrain_reward_model(catalog, sft_model, tokenizer, judge, model_config, reward_overrides)
        if args.retrain or overrides or args.reward_set:
            ppo_model, rows, wall_s, cpu_s = retrain(
                catalog, sft_model, tokenizer, reward_model, model_config, overrides
            )
            print(f"PPO wall time {wall_s:.1f} s, process CPU time {cpu_s:.1f} s ({torch.get_num_threads()} threads)")
        else:
            ppo_model, rows = catalog.load("ppo_model"), catalog.load("ppo_history")
    describe_run(rows)

    results = []
    for seed in args.seeds if args.seeds is not None else [eval_config.seed]:
        start = time.perf_counter()
        r = measure(
            sft_model, ppo_model, tokenizer, reward_model, prompts, judge, model_config, generation, eval_config, seed
        )
        results.append(r)
        print(
            f"seed {seed}: gold SFT {r['gold_sft']:.3f}  PPO {r['gold_ppo']:.3f}  win rate {r['win_rate']:.3f}  "
            f"RM SFT {r['rm_sft']:.2f} PPO {r['rm_ppo']:.2f}  KL {r['kl_ppo_sft']:.2f} nats  "
            f"tokens SFT {r['len_sft']:.1f} PPO {r['len_ppo']:.1f}  words SFT {r['words_sft']:.1f} "
            f"PPO {r['words_ppo']:.1f}  EOS {r['eos_ppo']:.2f}  looping {r['looping_ppo']:.3f} "
            f"near-empty {r['near_empty_ppo']:.3f}  ({time.perf_counter() - start:.0f} s)"
        )
    if len(results) > 1:
        mean = {k: np.mean([r[k] for r in results]) for k in results[0] if k != "example"}
        print("mean: " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    prompt, sft_text, ppo_text = results[0]["example"]
    print(f"\nprompt: {prompt}\n  SFT: {sft_text}\n  PPO: {ppo_text}")


if __name__ == "__main__":
    main()
