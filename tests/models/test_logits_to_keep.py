"""A causal LM whose forward has no ``logits_to_keep`` scores and samples as one that has it."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from alignops.models import generate
from alignops.models.scoring import keeps_logits, response_logits
from alignops.models.value_head import response_forward


class WithoutLogitsToKeep(LlamaForCausalLM):
    """As some architectures and remote-code models are: every position's logits, always."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, output_hidden_states=None):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, use_cache=use_cache,
                               output_hidden_states=output_hidden_states)


def test_a_model_without_logits_to_keep_gives_the_same_response_logits_values_and_samples(sft_model, tokenizer):
    plain = WithoutLogitsToKeep(sft_model.config).eval()
    plain.load_state_dict(sft_model.state_dict())
    assert keeps_logits(type(sft_model)) and not keeps_logits(WithoutLogitsToKeep)

    prompts = ["\n\nHuman: Where is my order?\n\nAssistant:", "\n\nHuman: Hi\n\nAssistant:"]
    samples = generate(sft_model.eval(), tokenizer, prompts, max_new_tokens=6, do_sample=False)
    again = generate(plain, tokenizer, prompts, max_new_tokens=6, do_sample=False)
    assert torch.equal(samples.response_ids, again.response_ids)

    inputs = (samples.query_ids, samples.query_mask, samples.response_ids, samples.response_mask)
    with torch.no_grad():
        logits, hidden = response_forward(sft_model, *inputs)
        other_logits, other_hidden = response_forward(plain, *inputs)
        assert logits.shape == other_logits.shape == (*samples.response_ids.shape, sft_model.config.vocab_size)
        assert torch.allclose(logits, other_logits, atol=1e-5) and torch.allclose(hidden, other_hidden, atol=1e-5)
        assert torch.allclose(response_logits(plain, *inputs), logits, atol=1e-5)


def test_place_moves_models_and_the_models_scorers_hold_and_leaves_text_judges_alone():
    from types import SimpleNamespace

    from alignops.models.loading import inference_device, place

    model, scorer, judge = torch.nn.Linear(2, 2), SimpleNamespace(model=torch.nn.Linear(2, 2)), object()
    place([model, scorer, judge], torch.device("meta"))  # a device every machine has
    assert model.weight.device.type == "meta" and scorer.model.weight.device.type == "meta"
    assert inference_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
