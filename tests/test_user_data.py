"""The whole journey on a user's own preference data: real HH-RLHF pairs, no gold judge, nothing of the world."""

from __future__ import annotations

import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import HH_SAMPLE, REPO_ROOT, TRACKED_FIRST_RUN_DATA, USER_ENV, make_user_env, run_kedro


def _poison_world_files(data: Path) -> list[Path]:
    """Overwrite everything the embedded world wrote with bytes no reader accepts: a run that
    read any of it would fail."""
    world = sorted(p for p in (data / "01_raw" / "world").rglob("*") if p.is_file())
    for path in world:
        path.write_bytes(b"\xff not the world any more \x00")
    return world


@pytest.mark.slow
def test_a_files_run_trains_and_judges_on_the_users_data_and_reads_nothing_of_the_world(tracked_project, tmp_path):
    from tests.helpers import make_project_copy

    project = make_project_copy(tmp_path / "project")
    shutil.copytree(tracked_project / TRACKED_FIRST_RUN_DATA, project / "data", dirs_exist_ok=True)
    world_demos = pd.read_json(project / "data" / "05_model_input" / "sft_demonstrations.jsonl", lines=True)
    assert _poison_world_files(project / "data"), "the world run left no raw files to poison"
    make_user_env(project)

    run_kedro(project, env=USER_ENV)

    data = project / "data"
    train = pd.read_parquet(data / "05_model_input" / "preferences_train.parquet")
    heldout = pd.read_parquet(data / "05_model_input" / "preferences_heldout.parquet")
    audit = pd.read_parquet(data / "05_model_input" / "preferences_audit.parquet")
    assert set(train["source"]) == {str(HH_SAMPLE)}
    parts = [set(part["prompt"]) for part in (train, heldout, audit)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]

    demos = pd.read_json(data / "05_model_input" / "sft_demonstrations.jsonl", lines=True, dtype=False)
    assert set(zip(demos["prompt"], demos["response"], strict=True)) == set(
        zip(train["prompt"], train["chosen"], strict=True))  # SFT on the chosen replies of the training split
    assert not set(demos["response"]) & set(world_demos["response"])
    prompts = pd.read_json(data / "05_model_input" / "eval_prompts.jsonl", lines=True, dtype=False)
    assert set(prompts["prompt"]) == set(heldout["prompt"])  # the held-out prompts, each once
    assert prompts["prompt"].is_unique and prompts["prompt"].str.endswith("\n\nAssistant:").all()

    summary = json.loads((data / "08_reporting" / "evaluation_summary.json").read_text())
    assert summary["judge"] == "audit" and set(summary["judges"]) == {"audit"}
    assert summary["n_prompts"] == len(prompts)
    for name, figures in summary["policies"].items():
        assert not any(key.startswith("gold") for key in figures), name
        win = figures["audit_win_rate_vs_sft"]
        assert win["ci_low"] <= win["value"] <= win["ci_high"], name
    assert summary["policies"]["sft"]["audit_win_rate_vs_sft"] == {"value": 0.5, "ci_low": 0.5, "ci_high": 0.5}
    assert summary["audit_judge"]["heldout_pairs"] == len(heldout)

    decision = json.loads((data / "08_reporting" / "registry_decision.json").read_text())
    assert decision["judge"] == "audit" and decision["n_prompts"] == len(prompts), decision
    assert decision["ci_low"] <= decision["value"] <= decision["ci_high"]
    history = json.loads((data / "08_reporting" / "audit_judge_history.json").read_text())
    assert any("eval/audit_judge/accuracy" in row for row in history)
    assert not any(name.startswith("reward/") for row in history for name in row)


def _calling_stage() -> str:
    """The alignops module outside ``alignops.models`` that asked for a rendering: the stage."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("alignops.") and not module.startswith("alignops.models"):
            return module
        frame = frame.f_back
    return "?"


@pytest.mark.slow
def test_with_a_chat_template_training_rollouts_and_the_served_model_render_the_same_strings(tmp_path, monkeypatch):
    import mlflow

    from alignops.models import chat
    from alignops.models.config import ModelConfig
    from alignops.models.generation import GenerationConfig, sample_responses
    from alignops.models.loading import load_model
    from alignops.models.tokenizer import load_tokenizer
    from tests.helpers import make_project_copy, save_tiny_chat_llama

    hh = pd.read_json(HH_SAMPLE, lines=True)
    base = save_tiny_chat_llama(tmp_path / "my-llama", texts=(hh["chosen"].head(60)).tolist())
    project = make_project_copy(tmp_path / "project")
    make_user_env(project, model={"base": str(base), "max_prompt_tokens": 32, "max_response_tokens": 24})

    prompts_seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # prompt -> stage -> text
    conversations_seen: dict[tuple[str, str], set[str]] = defaultdict(set)  # (prompt, reply) -> training text
    render_prompts, render_completions = chat.Renderer.prompts, chat.Renderer.completions

    def prompts(self, canonical):
        rendered = render_prompts(self, canonical)
        stage = _calling_stage()
        for prompt, text in zip(canonical, rendered, strict=True):
            prompts_seen[prompt][stage].add(text)
        return rendered

    def completions(self, canonical, responses):
        rendered, completed = render_completions(self, canonical, responses)
        for prompt, response, head, tail in zip(canonical, responses, rendered, completed, strict=True):
            conversations_seen[(prompt, response)].add(head + tail)
        return rendered, completed

    monkeypatch.setattr(chat.Renderer, "prompts", prompts)
    monkeypatch.setattr(chat.Renderer, "completions", completions)

    run_kedro(project, env=USER_ENV)

    tokenizer = load_tokenizer(str(project / "data" / "06_models" / "tokenizer"))
    assert tokenizer.chat_template == load_tokenizer(str(base)).chat_template

    def template(messages, **kwargs):
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    # training text: SFT's demonstrations (and the preference pairs) are the template's conversations
    demos = pd.read_json(project / "data" / "05_model_input" / "sft_demonstrations.jsonl", lines=True, dtype=False)
    for prompt, response in zip(demos["prompt"], demos["response"], strict=True):
        messages = [*chat.parse_transcript(prompt), {"role": "assistant", "content": response}]
        assert conversations_seen[(prompt, response)] == {template(messages)}
    # rollout prompts: what PPO sampled from is the template's generation prompt, as SFT saw it
    rolled = [p for p, stages in prompts_seen.items() if "alignops.training.ppo" in stages]
    assert rolled
    for prompt in rolled:
        stages = prompts_seen[prompt]
        expected = template(chat.parse_transcript(prompt), add_generation_prompt=True)
        assert expected.startswith(tokenizer.bos_token)
        assert all(texts == {expected} for texts in stages.values()), (prompt, dict(stages))
        assert "alignops.training.sft" in stages or "alignops.training.reward" in stages

    # the served model: the registered policy renders the same strings and decodes greedily as the pipeline does
    decision = json.loads((project / "data" / "08_reporting" / "registry_decision.json").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{project / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model(f"models:/{decision['policy_model']}/{decision['policy_version']}")
    asked = rolled[:4]
    replies = served.predict(asked, params={"do_sample": False})
    for prompt in asked:
        assert prompts_seen[prompt]["alignops.tracking.models"] == prompts_seen[prompt]["alignops.training.ppo"]
    model_params = yaml.safe_load((project / "conf" / USER_ENV / "parameters_model.yml").read_text())["model"]
    model_config = ModelConfig(**{**yaml.safe_load((REPO_ROOT / "conf" / "base" / "parameters_model.yml")
                                                   .read_text())["model"], **model_params})
    policy = load_model(project / "data" / "06_models" / decision["method"])
    generation = yaml.safe_load((project / "conf" / USER_ENV / "parameters_generation.yml").read_text())
    ours = sample_responses(policy, tokenizer, asked, model_config, GenerationConfig(**generation["generation"]),
                            seed=0, do_sample=False)
    assert list(replies) == ours.texts
