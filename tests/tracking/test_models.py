"""Logged policies come back from MLflow ready to sample exactly as the pipeline did."""

from __future__ import annotations

import mlflow
import torch

from alignops.models.generation import GenerationConfig, sample_responses
from alignops.tracking.models import load_policy, log_policy
from tests.helpers import TINY_LLAMA, make_tiny_policy, make_tiny_tokenizer

PROMPTS = ["my parcel is late", "reset my password"]


def test_a_logged_policy_loads_with_its_prompt_format_and_generation_settings(tracking_uri):
    tokenizer = make_tiny_tokenizer(["my parcel is late, where is it?", "please reset my password"] * 10)
    policy = make_tiny_policy(tokenizer, seed=0)
    generation = GenerationConfig(temperature=0.9, top_k=5, max_new_tokens=6)
    served = {"max_new_tokens": 6, "do_sample": True, **generation.sampling_kwargs()}
    with mlflow.start_run():
        info = log_policy(policy, tokenizer, TINY_LLAMA, served)
    model, loaded_tokenizer, model_config, loaded_generation = load_policy(info.model_uri)
    assert model_config == TINY_LLAMA and loaded_generation == generation
    ours = sample_responses(policy, tokenizer, PROMPTS, TINY_LLAMA, generation, seed=1)
    theirs = sample_responses(model, loaded_tokenizer, PROMPTS, model_config, loaded_generation, seed=1)
    assert torch.equal(ours.response_ids, theirs.response_ids) and ours.texts == theirs.texts
