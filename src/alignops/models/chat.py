"""Prompts and replies as a model reads them: its tokenizer's chat template, or the plain template.

A canonical prompt is a string: a bare question (the world's), or an HH-style
transcript (``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"``,
what ingestion makes of HH-RLHF and TRL conversational records). ``Renderer`` is the
one place that turns it into model text, for every stage: SFT, the reward model, DPO,
sampling (PPO rollouts, reward normalisation, evaluation) and the served policy.

- The tokenizer has a chat template: the prompt is parsed into messages
  (``parse_transcript``; a bare question is one user message) and rendered with
  ``apply_chat_template(add_generation_prompt=True)``. A training reply is what the
  template writes after that prompt for the conversation with the reply appended, so
  its end-of-turn and EOS tokens are the template's, and nothing else is added.
  ``prompt_template`` and ``response_prefix`` are not used.
- It has none: ``prompt_template.format(prompt=...)``, and a reply is
  ``response_prefix + reply`` followed by EOS, as the project has always done.

Either way the text is tokenised without the tokenizer's own special tokens
(``add_special_tokens=False``, as ``apply_chat_template(tokenize=True)`` does): BOS
and EOS are exactly where the template, or the plain format, puts them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from alignops.models.collate import Batch, tokenize_completions
from alignops.models.config import ModelConfig

Message = dict[str, str]
"""``{"role": "user" | "assistant" | "system", "content": ...}``, as chat templates take them."""

ROLE_LABELS: dict[str, str] = {"user": "Human", "assistant": "Assistant", "system": "System"}
"""Chat role -> speaker label of an HH transcript; the same table ingestion renders TRL
conversational records with (``alignops.preferences.formats.ROLE_LABELS``, a test checks)."""
_ROLES = {label: role for role, label in ROLE_LABELS.items()}
_LABELS = "|".join(ROLE_LABELS.values())
_OPENING = re.compile(rf"\s*(?:{ROLE_LABELS['user']}|{ROLE_LABELS['system']}):")
_TURN = re.compile(rf"(?:^\s*|\n\n)({_LABELS}): ?")


def parse_transcript(prompt: str) -> list[Message]:
    """The messages of a canonical prompt; a bare question is one user message.

    A transcript opens with a Human or System turn; each ``"\\n\\n<Label>: "`` starts
    a message. The empty Assistant turn that ends a prompt is the cue to answer, not a
    message. Text that looks like a label inside a message cannot be told apart from
    a turn: HH transcripts have the same ambiguity.
    """
    if not _OPENING.match(prompt):
        return [{"role": "user", "content": prompt}]
    parts = _TURN.split(prompt)  # ["", label, content, label, content, ...]
    messages = [{"role": _ROLES[label], "content": content} for label, content in zip(parts[1::2], parts[2::2],
                                                                                       strict=True)]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        messages.pop()
    return messages


def render_transcript(messages: Sequence[Message]) -> str:
    """The HH transcript of ``messages`` ending with the empty Assistant turn (``parse_transcript``'s inverse)."""
    return "".join(f"\n\n{ROLE_LABELS[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class Renderer:
    """Model text for canonical prompts and replies, with one tokenizer.

    Build it with ``Renderer.for_model(model_config, tokenizer)`` for a policy; the reward
    model builds its own from its tokenizer and saved format (``RewardModel.renderer``).
    """

    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    prompt_template: str = "{prompt}"
    """The plain format of a prompt (``ModelConfig.prompt_template``); unused with a chat template."""
    response_prefix: str = ""
    """Put before a reply in the plain format (``ModelConfig.response_prefix``); unused with a chat template."""

    @classmethod
    def for_model(cls, config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> Renderer:
        return cls(tokenizer, config.prompt_template, config.response_prefix)

    @property
    def uses_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    @property
    def decoded_prefix(self) -> str:
        """What is removed from the front of a generated reply's text: the plain format's prefix."""
        return "" if self.uses_chat_template else self.response_prefix

    def prompts(self, prompts: Sequence[str]) -> list[str]:
        """Each prompt as generation continues it."""
        if not self.uses_chat_template:
            return [self.prompt_template.format(prompt=p) for p in prompts]
        return self._chat([parse_transcript(p) for p in prompts], add_generation_prompt=True)

    def completions(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
        """(rendered prompts, what follows each of them in training): prompt + completion is the
        whole conversation as the template renders it, end-of-turn tokens included."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rendered = self.prompts(prompts)
        if not self.uses_chat_template:
            return rendered, [self.response_prefix + r for r in responses]
        conversations = [
            [*parse_transcript(p), {"role": "assistant", "content": r}] for p, r in zip(prompts, responses, strict=True)
        ]
        whole = self._chat(conversations, add_generation_prompt=False)
        completions = []
        for prompt, text in zip(rendered, whole, strict=True):
            if not text.startswith(prompt):
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation as its prompt followed by the "
                    f"reply, so the reply's tokens cannot be located: prompt {prompt!r}, conversation {text!r}"
                )
            completions.append(text[len(prompt) :])
        return rendered, completions

    def tokenize(
        self, prompts: Sequence[str], responses: Sequence[str], max_prompt_tokens: int, max_response_tokens: int
    ) -> Batch:
        """Training rows of (prompt, response) pairs (``alignops.models.collate``'s layout): the
        completion mask covers the reply and the tokens that end it (EOS, or the template's)."""
        rendered, completions = self.completions(prompts, responses)
        return tokenize_completions(
            self.tokenizer,
            rendered,
            completions,
            max_prompt_tokens,
            max_response_tokens,
            append_eos=not self.uses_chat_template,
        )

    def tokenize_pairs(
        self,
        prompts: Sequence[str],
        chosen: Sequence[str],
        rejected: Sequence[str],
        max_prompt_tokens: int,
        max_response_tokens: int,
    ) -> Batch:
        """B comparisons as 2B rows: rows ``[:B]`` answer with ``chosen``, rows ``[B:]`` with ``rejected``."""
        if not len(prompts) == len(chosen) == len(rejected):
            raise ValueError(f"{len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected")
        return self.tokenize(
            list(prompts) * 2, list(chosen) + list(rejected), max_prompt_tokens, max_response_tokens
        )

    def _chat(self, conversations: list[list[Message]], add_generation_prompt: bool) -> list[str]:
        if not conversations:
            return []
        return self.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=add_generation_prompt, tokenize=False
        )
