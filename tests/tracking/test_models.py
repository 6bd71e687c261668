"""A logged policy serves exactly what the pipeline samples: the same rendering (chat template or
plain), the same settings, the same tokens; and it comes back ready to sample as before."""

from __future__ import annotations

import dataclasses

import mlflow
import pytest
import torch

from alignops.models.generation import GenerationConfig, sample_responses
from alignops.tracking.models import load_policy, log_policy
from tests.helpers import TINY_LLAMA, make_chat_tokenizer, make_tiny_policy, make_tiny_tokenizer

TEXTS = ["my parcel is late, where is it?", "please reset my password"] * 10
PROMPTS = [
    "my parcel is late",
    "reset my password",
    "\n\nHuman: where is it\n\nAssistant: late\n\nHuman: why\n\nAssistant:",
]
MODEL = dataclasses.replace(TINY_LLAMA, max_position_embeddings=96, max_prompt_tokens=64)
GENERATION = GenerationConfig(temperature=0.9, top_k=5, max_new_tokens=6)
TOKENIZERS = {"plain": make_tiny_tokenizer, "chat": make_chat_tokenizer}


@pytest.fixture(params=sorted(TOKENIZERS))
def policy(request):
    """(model, tokenizer) of a random tiny Llama, with and without a chat template."""
    tokenizer = TOKENIZERS[request.param](TEXTS)
    model = make_tiny_policy(tokenizer, seed=0)
    with torch.no_grad():  # sharper logits than a fresh init: greedy ties would be luck
        model.get_input_embeddings().weight.mul_(20)
    return model, tokenizer


def _log_champion(model, tokenizer) -> str:
    served = {"max_new_tokens": GENERATION.max_new_tokens, "do_sample": True, **GENERATION.sampling_kwargs()}
    with mlflow.start_run():
        info = log_policy(model, tokenizer, MODEL, served)
    version = mlflow.register_model(info.model_uri, "alignops-policy").version
    mlflow.MlflowClient().set_registered_model_alias("alignops-policy", "champion", version)
    return "models:/alignops-policy@champion"


def test_a_logged_policy_loads_with_its_prompt_format_and_generation_settings(tracking_uri, policy):
    model, tokenizer = policy
    uri = _log_champion(model, tokenizer)
    loaded, loaded_tokenizer, model_config, generation = load_policy(uri)
    assert model_config == MODEL and generation == GENERATION
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    ours = sample_responses(model, tokenizer, PROMPTS, MODEL, GENERATION, seed=1)
    theirs = sample_responses(loaded, loaded_tokenizer, PROMPTS, model_config, generation, seed=1)
    assert torch.equal(ours.query_ids, theirs.query_ids) and torch.equal(ours.response_ids, theirs.response_ids)
    assert ours.texts == theirs.texts


def test_the_champions_greedy_replies_are_the_pipelines_greedy_decode(tracking_uri, policy):
    model, tokenizer = policy
    served = mlflow.pyfunc.load_model(_log_champion(model, tokenizer))
    greedy = sample_responses(model, tokenizer, PROMPTS, MODEL, GENERATION, seed=None, do_sample=False)
    assert any(greedy.texts)  # not vacuously equal
    assert served.predict(PROMPTS, params={"do_sample": False}) == greedy.texts
    # a longer limit per call, still the pipeline's decode
    longer_limit = dataclasses.replace(GENERATION, max_new_tokens=12)
    longer = sample_responses(model, tokenizer, PROMPTS, MODEL, longer_limit, seed=None, do_sample=False)
    assert served.predict(PROMPTS, params={"do_sample": False, "max_new_tokens": 12}) == longer.texts


def test_the_champion_samples_with_the_settings_it_was_evaluated_with(tracking_uri, policy):
    model, tokenizer = policy
    served = mlflow.pyfunc.load_model(_log_champion(model, tokenizer))
    sampled = sample_responses(model, tokenizer, PROMPTS, MODEL, GENERATION, seed=7)
    assert served.predict(PROMPTS, params={"seed": 7}) == sampled.texts
    hotter = dataclasses.replace(GENERATION, temperature=1.5, top_k=0, top_p=0.9)
    overridden = sample_responses(model, tokenizer, PROMPTS, MODEL, hotter, seed=7)
    assert served.predict(PROMPTS, params={"seed": 7, "temperature": 1.5, "top_k": 0, "top_p": 0.9}) == (
        overridden.texts
    )


@mlflow.pyfunc.utils.pyfunc
def echo(model_input: list[str]) -> list[str]:
    return model_input


def test_load_policy_refuses_a_model_alignops_did_not_log(tracking_uri):
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="echo", python_model=echo, input_example=["hi"])
    with pytest.raises(ValueError, match="not a policy logged by alignops"):
        load_policy(info.model_uri)
